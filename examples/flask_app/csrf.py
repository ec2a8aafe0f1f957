"""CSRF protection: a random token in the signed session, echoed by every form.

Every POST must carry the token of the session (field ``csrf_token``);
otherwise the request is refused with 400 before any view runs (the
application's French error page, with a link back to the form).  Templates
write the field with ``{{ csrf_field() }}``.
"""

from __future__ import annotations

import hmac
import secrets

from flask import Flask, abort, request, session
from markupsafe import Markup, escape

FIELD = "csrf_token"
_SESSION_KEY = "csrf_token"
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def token() -> str:
    """This session's token (made on first use)."""
    value = session.get(_SESSION_KEY)
    if not isinstance(value, str):
        value = secrets.token_urlsafe(32)
        session[_SESSION_KEY] = value
    return value


def field() -> Markup:
    """The hidden form field holding the token."""
    return Markup('<input type="hidden" name="{}" value="{}">').format(FIELD, escape(token()))


def check() -> None:
    """Refuse an unsafe request without this session's token."""
    if request.method not in _UNSAFE:
        return
    expected = session.get(_SESSION_KEY)
    sent = request.form.get(FIELD, "")
    if not isinstance(expected, str) or not hmac.compare_digest(expected.encode(), sent.encode()):
        abort(400, description="Formulaire expiré ou invalide\u00a0: rechargez la page et "
                               "recommencez.")


def init_app(app: Flask) -> None:
    """Check every unsafe request; give templates ``csrf_field()``."""
    app.before_request(check)
    app.jinja_env.globals["csrf_field"] = field
