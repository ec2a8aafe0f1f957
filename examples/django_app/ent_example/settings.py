"""Settings of the example ENT: SQLite beside this file, French, the account_merge app."""

from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "example-only-change-me"
DEBUG = True
ALLOWED_HOSTS = ["localhost", "127.0.0.1"]
USE_TZ = True
TIME_ZONE = "Europe/Paris"
LANGUAGE_CODE = "fr"
ROOT_URLCONF = "ent_example.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "account_merge.contrib.django",
    "ent_example",
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
    ]},
}]
STATIC_URL = "static/"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": BASE_DIR / "ent.sqlite3",
        # With ATOMIC_REQUESTS on SQLite, add "transaction_mode": "IMMEDIATE"
        # (Django 5.1+): manage.py check says so (account_merge.E002).
        "OPTIONS": {"timeout": 20},
    },
}

# The library's settings, some of their defaults spelled out (see
# docs/integrations/django.md).
ACCOUNT_MERGE = {
    "DATABASE": None,
    "PROVISIONAL_VALIDITY": 90 * 24 * 3600,
    "THROTTLE_BACKOFF_AFTER": 5,
    "THROTTLE_LOCK_AFTER": 10,
    "THROTTLE_LOCK_FOR": 24 * 3600,
}
