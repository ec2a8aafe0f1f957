"""Sessions that can be ended: a token in the signed cookie, its digest in the database.

Flask's session is a signed cookie: clearing it signs out one browser,
but a copy of the cookie (another tab, a stolen one) would stay valid
until it expires.  So each session also lives in the example's
``sessions`` table (:mod:`.store`), under a *subject*
(``parent:<account id>``, ``personnel:<login>``): a request whose token
is no longer there is signed out.  Signing out ends the session; a new
password ends every session of the account but the one that chose it; a
password reset ends them all.
"""

from __future__ import annotations

from typing import Any

from flask import session

from account_merge.contrib.flask import get_service

from .store import get_store

_TOKEN = "jeton"


def parent(account_id: str) -> str:
    """The subject of a parent's sessions."""
    return f"parent:{account_id}"


def staff(login: str) -> str:
    """The subject of a staff member's sessions."""
    return f"personnel:{login}"


def sign_in(subject: str, **values: Any) -> None:
    """Start a new session for *subject* (nothing from before survives), with *values*."""
    session.clear()
    session[_TOKEN] = get_store().open_session(subject, get_service().clock())
    session.update(values)


def current_subject() -> str | None:
    """Whose this request's session is, or None; a session ended elsewhere is cleared."""
    token = session.get(_TOKEN)
    if not isinstance(token, str):
        return None
    subject = get_store().session_subject(token)
    if subject is None:
        session.clear()
    return subject


def sign_out() -> None:
    """End this session, here and in every copy of the cookie."""
    token = session.get(_TOKEN)
    if isinstance(token, str):
        get_store().end_session(token)
    session.clear()


def end_all(subject: str) -> int:
    """End every session of *subject* (a new password, a reset); how many were open."""
    return get_store().end_sessions_of(subject)
