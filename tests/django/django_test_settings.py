"""Settings of the Django tests: the app, the example ENT's pages, two databases.

``default`` is an SQLite file; ``postgres`` is the throwaway server of
``tests/pg.py``, filled in by the conftest when the server is there.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import django

BASE = Path(__file__).resolve().parent
SQLITE_FILE = Path(tempfile.gettempdir()) / f"account-merge-django-{os.getpid()}.sqlite3"

SECRET_KEY = "tests-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["testserver"]
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
# The example ENT's: staff with Django's users, parents with the library's accounts.
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "account_merge.contrib.django.auth.AccountMergeBackend",
]
RECENT_LOGIN_MAX_AGE = 600

DATABASES = {
    # The write lock is taken by DjangoStorage itself (no transaction_mode):
    # that is the path every Django version takes.
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(SQLITE_FILE),
        "OPTIONS": {"timeout": 20, **({"init_command": "PRAGMA synchronous = OFF"}
                                      if django.VERSION >= (5, 1) else {})},
        "TEST": {"NAME": str(SQLITE_FILE)},
    },
    "postgres": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "account_merge_test",
        "USER": "postgres",
        "HOST": "/nonexistent-until-the-server-starts",
        "TEST": {"NAME": "test_account_merge_django"},
    },
}

# Django hashers the ENT's stored passwords may use (fast ones first for tests).
PASSWORD_HASHERS = [
    "fast_verifier.FastPBKDF2PasswordHasher",
    "fast_verifier.FastArgon2PasswordHasher",
    "django.contrib.auth.hashers.MD5PasswordHasher",
]

ACCOUNT_MERGE = {
    "VERIFIER": "fast_verifier.fast_django_verifier",
    "IDENTITY_RULE": None,
}
