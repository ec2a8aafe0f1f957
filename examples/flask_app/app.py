"""The application factory: configuration, the account_merge extension, the pages."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask, Response, render_template, request
from werkzeug.exceptions import HTTPException, InternalServerError

from account_merge.contrib.flask import CONFIG_KEYS, get_state, handle_errors, init_app
from account_merge.demo import COLLEGE

from . import csrf, etablissement, parent, recuperation, seed, store

#: Seconds after signing in during which the merge form opens without
#: asking for the password again.
RECENT_LOGIN_MAX_AGE = 600

#: Where the example runs (``flask run``), for the links of its notices.
DEFAULT_BASE_URL = "http://127.0.0.1:5000"


def create_app(config: Mapping[str, Any] | None = None, *,
               instance_path: str | os.PathLike[str] | None = None,
               **account_merge_options: Any) -> Flask:
    """The application, configured by, in order: defaults, environment, *config*.

    The environment gives ``FLASK_SECRET_KEY`` (and any other
    ``FLASK_*`` key: ``FLASK_SESSION_COOKIE_SECURE=false`` for a trial over
    plain HTTP on another machine than 127.0.0.1), the ``ACCOUNT_MERGE_*``
    keys of :mod:`account_merge.contrib.flask` (``ACCOUNT_MERGE_DATABASE_URL``
    for PostgreSQL), and ``ENT_BASE_URL`` and ``ENT_MAILBOX`` for the links
    of notices (see ``_way_back``).  Without a URL the store is a SQLite
    file in the instance folder.  The session cookie is ``Secure`` unless
    the application runs in debug mode (``flask run --debug``).
    *account_merge_options* go to :func:`account_merge.contrib.flask.init_app`
    (a clock, a verifier, a mailer...).
    """
    app = Flask(__name__, instance_path=os.fspath(instance_path) if instance_path else None)
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)
    app.config.update(
        ESTABLISHMENT=COLLEGE,
        RECENT_LOGIN_MAX_AGE=RECENT_LOGIN_MAX_AGE,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_HTTPONLY=True,
        # Sent over HTTPS only, but while developing (browsers also keep a
        # Secure cookie of http://127.0.0.1 and http://localhost).
        SESSION_COOKIE_SECURE=not app.debug,
        ENT_TABLE_PREFIX="ent_",
    )
    app.config.from_prefixed_env()
    for key in sorted(CONFIG_KEYS):
        if key in os.environ:
            value = os.environ[key]
            app.config[key] = json.loads(value) if key.endswith("ENGINE_OPTIONS") else value
    for key in ("ENT_BASE_URL", "ENT_MAILBOX"):
        if key in os.environ:
            app.config[key] = os.environ[key]
    app.config.update(config or {})

    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = _instance_secret(app, "secret_key", 32)
    if not (app.config.get("ACCOUNT_MERGE_DATABASE_URL")
            or app.config.get("ACCOUNT_MERGE_SQLITE_PATH")):
        path = Path(app.instance_path) / "scolarite.sqlite3"
        app.config["ACCOUNT_MERGE_DATABASE_URL"] = f"sqlite:///{path}"

    _way_back(app)
    state = init_app(app, **account_merge_options)
    # No migrations in this example: the tables are created if missing, and
    # those an earlier release made are brought up to date.
    state.upgrade_schema()

    store.init_app(app)

    csrf.init_app(app)
    app.register_blueprint(parent.blueprint)
    app.register_blueprint(etablissement.blueprint)
    app.register_blueprint(recuperation.blueprint)
    app.extensions["ent_mailbox"] = recuperation.Mailbox()
    app.cli.add_command(seed.seed_command)
    app.cli.add_command(seed.staff_command)
    _error_pages(app)

    @app.after_request
    def no_store(response: Response) -> Response:
        # The pages show personal data and letters with passwords.
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    return app


def _way_back(app: Flask) -> None:
    """The secret key and links of the notices, unless configured.

    The links are this site's pages at ``ENT_BASE_URL`` (configured, never
    taken from a request's ``Host``); the key is a random secret kept in
    the instance folder.  ``ENT_MAILBOX`` (on unless ``"0"``) shows the
    notices at ``/courriels``: this example has no mail server.
    """
    if not app.config.get("ACCOUNT_MERGE_SECRET_KEY"):
        app.config["ACCOUNT_MERGE_SECRET_KEY"] = _instance_secret(app, "links_key", 32)
    if not app.config.get("ACCOUNT_MERGE_LINKS"):
        base = str(app.config.get("ENT_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        app.config["ACCOUNT_MERGE_LINKS"] = {
            "password_reset": f"{base}/mot-de-passe/{{token}}",
            "email_verification": f"{base}/courriel/{{token}}",
            "sign_in": f"{base}/connexion",
        }
    app.config["ENT_MAILBOX"] = str(app.config.get("ENT_MAILBOX", "1")).strip() not in (
        "0", "", "false", "False")


def _error_pages(app: Flask) -> None:
    """French error pages, each with a way back; the library's errors a view lets out too."""
    # What a view does not handle itself (a store that fails, say): its status and message.
    handle_errors(app, template="erreur.html", language="fr")

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> tuple[str, int]:
        status = error.code or 500
        # An expired form (400, its CSRF token) goes back to the form it came from.
        back = request.path if status == 400 and request.method == "POST" else None
        return render_template("erreur.html", status=status, code=None, message=None,
                               back=back), status

    @app.errorhandler(InternalServerError)
    def server_error(error: InternalServerError) -> tuple[str, int]:
        return render_template("erreur.html", status=500, code=None, message=None,
                               back=None), 500


def close_app(app: Flask) -> None:
    """Close the stores the application opened (tests, scripts)."""
    get_state(app).close()
    store.get_store_of(app).close()


def _instance_secret(app: Flask, name: str, nbytes: int) -> str:
    """A random secret kept in the instance folder, made on first use."""
    path = Path(app.instance_path) / name
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        value = secrets.token_hex(nbytes)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as file:
            file.write(value)
        return value
