"""Settings of the example ENT: SQLite beside this file, French, the account_merge app.

Nothing secret is written here.  The project's ``SECRET_KEY`` comes from
the environment (``ENT_SECRET_KEY``), or, on a developer's machine, from
the file ``.secret_key`` beside this folder, made on the first run and
readable by its owner only.  ``DEBUG`` is off unless ``ENT_DEBUG=1``.
The library's own key (it signs the links of e-mails) is derived from
``SECRET_KEY`` by the app.
"""

import os
import secrets
from pathlib import Path
from typing import Any

import django

BASE_DIR = Path(__file__).resolve().parent.parent


def _secret_key() -> str:
    given = os.environ.get("ENT_SECRET_KEY")
    if given:
        return given
    path = BASE_DIR / ".secret_key"
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        key = secrets.token_urlsafe(50)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="ascii") as file:
            file.write(key)
        return key


SECRET_KEY = _secret_key()
DEBUG = os.environ.get("ENT_DEBUG") == "1"
#: The address parents use (the links of e-mails start with it).
BASE_URL = os.environ.get("ENT_BASE_URL", "http://127.0.0.1:8000")
ALLOWED_HOSTS = ["localhost", "127.0.0.1"]
USE_TZ = True
TIME_ZONE = "Europe/Paris"
LANGUAGE_CODE = "fr"
ROOT_URLCONF = "ent_example.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
STATIC_URL = "static/"

INSTALLED_APPS = [
    "ent_example",  # first: its templates (admin/login.html) win over the admin's
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "account_merge.contrib.django",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "DIRS": [],
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
        "ent_example.views.parent_context",
    ]},
}]

# Staff sign in with Django's users (the admin); parents with the library's accounts.
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "account_merge.contrib.django.auth.AccountMergeBackend",
]
LOGIN_URL = "ent:connexion"
# The session cookie: only over HTTPS outside development, never read by scripts.
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = not DEBUG and BASE_URL.startswith("https://")
SESSION_COOKIE_HTTPONLY = True

DATABASES: dict[str, dict[str, Any]] = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": BASE_DIR / "ent.sqlite3",
        "OPTIONS": {"timeout": 20},
    },
}
if django.VERSION >= (5, 1):
    # Each request in one transaction; on SQLite it must take the write lock when it
    # begins (manage.py check says so: account_merge.E002).  The views that check a
    # password are left out (views.PASSWORD_VIEWS), so that no lock waits on argon2.
    DATABASES["default"]["ATOMIC_REQUESTS"] = True
    DATABASES["default"]["OPTIONS"]["transaction_mode"] = "IMMEDIATE"

# The library's settings, some of their defaults spelled out (see
# docs/integrations/django.md).
ACCOUNT_MERGE: dict[str, Any] = {
    "DATABASE": None,
    # The way back: the pages behind the links of e-mails, by their URL names, on the
    # address parents use (never taken from a request's Host).  The key that signs
    # them is derived from SECRET_KEY.  Run ``manage.py account_merge_deliver_notices``
    # periodically to send them.
    "BASE_URL": BASE_URL,
    "LINKS": {"password_reset": "ent:lien_mot_de_passe",
              "email_verification": "ent:lien_courriel",
              "sign_in": "ent:connexion"},
    # Behind a reverse proxy, its address here (the client is then read from the
    # X-Forwarded-For it appends); without it, the connection's address.
    "TRUSTED_PROXIES": [],
    "PROVISIONAL_VALIDITY": 90 * 24 * 3600,
    "THROTTLE_BACKOFF_AFTER": 5,
    "THROTTLE_LOCK_AFTER": 10,
    "THROTTLE_LOCK_FOR": 24 * 3600,
}

#: How long a sign-in counts as recent: older, the merge form asks for the password again.
RECENT_LOGIN_MAX_AGE = 600

# This example has no mail server: the e-mails are written as files in courriels/.
EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
EMAIL_FILE_PATH = BASE_DIR / "courriels"
DEFAULT_FROM_EMAIL = "ne-pas-repondre@ent.example"
