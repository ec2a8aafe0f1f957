"""The application factory: configuration, the account_merge extension, the pages."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask, Response

from account_merge.contrib.flask import CONFIG_KEYS, get_state, init_app
from account_merge.demo import COLLEGE

from . import csrf, etablissement, parent, seed

#: Seconds after signing in during which the merge form opens without
#: asking for the password again.
RECENT_LOGIN_MAX_AGE = 600


def create_app(config: Mapping[str, Any] | None = None, *,
               instance_path: str | os.PathLike[str] | None = None,
               **account_merge_options: Any) -> Flask:
    """The application, configured by, in order: defaults, environment, *config*.

    The environment gives ``FLASK_SECRET_KEY`` (and any other
    ``FLASK_*`` key), the ``ACCOUNT_MERGE_*`` keys of
    :mod:`account_merge.contrib.flask` (``ACCOUNT_MERGE_DATABASE_URL``
    for PostgreSQL), and ``ESTABLISHMENT_ACCESS_CODE``.  Without a URL the
    store is a SQLite file in the instance folder.  *account_merge_options*
    go to :func:`account_merge.contrib.flask.init_app` (a clock, a
    verifier...).
    """
    app = Flask(__name__, instance_path=os.fspath(instance_path) if instance_path else None)
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)
    app.config.update(
        ESTABLISHMENT=COLLEGE,
        RECENT_LOGIN_MAX_AGE=RECENT_LOGIN_MAX_AGE,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_HTTPONLY=True,
    )
    app.config.from_prefixed_env()
    for key in sorted(CONFIG_KEYS):
        if key in os.environ:
            value = os.environ[key]
            app.config[key] = json.loads(value) if key.endswith("ENGINE_OPTIONS") else value
    if "ESTABLISHMENT_ACCESS_CODE" in os.environ:
        app.config["ESTABLISHMENT_ACCESS_CODE"] = os.environ["ESTABLISHMENT_ACCESS_CODE"]
    app.config.update(config or {})

    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = _instance_secret(app, "secret_key", 32)
    if not app.config.get("ESTABLISHMENT_ACCESS_CODE"):
        app.config["ESTABLISHMENT_ACCESS_CODE"] = _instance_secret(app, "establishment_code", 5)
    if not (app.config.get("ACCOUNT_MERGE_DATABASE_URL")
            or app.config.get("ACCOUNT_MERGE_SQLITE_PATH")):
        path = Path(app.instance_path) / "scolarite.sqlite3"
        app.config["ACCOUNT_MERGE_DATABASE_URL"] = f"sqlite:///{path}"

    state = init_app(app, **account_merge_options)
    # No migrations in this example: the tables are created if missing, and
    # those an earlier release made are brought up to date.
    state.upgrade_schema()

    csrf.init_app(app)
    app.register_blueprint(parent.blueprint)
    app.register_blueprint(etablissement.blueprint)
    app.cli.add_command(seed.seed_command)

    @app.after_request
    def no_store(response: Response) -> Response:
        # The pages show personal data and letters with passwords.
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    return app


def close_app(app: Flask) -> None:
    """Close the store the application opened (tests, scripts)."""
    get_state(app).close()


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
