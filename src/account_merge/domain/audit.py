"""The audit trail: who did what, when, and how it ended.  No secrets."""

from __future__ import annotations

import enum
from datetime import datetime

import attrs

__all__ = ["AuditAction", "AuditRecord"]


class AuditAction(enum.Enum):
    """What was attempted."""

    REGISTER_ESTABLISHMENT = "register_establishment"
    ISSUE = "issue"
    ACTIVATE = "activate"
    AUTHENTICATE = "authenticate"
    CHANGE_PASSWORD = "change_password"
    CHANGE_EMAIL = "change_email"
    MERGE = "merge"
    SPLIT = "split"
    # the way back: recovery, e-mail confirmation, letters re-issued, notices
    REQUEST_PASSWORD_RESET = "request_password_reset"
    RESET_PASSWORD = "reset_password"
    REQUEST_LOGIN_REMINDER = "request_login_reminder"
    REQUEST_EMAIL_CHANGE = "request_email_change"
    CONFIRM_EMAIL = "confirm_email"
    REISSUE_LETTER = "reissue_letter"
    NOTICE = "notice"
    SYNC_REGISTER = "sync_register"
    # retention: one record per purge, with its counts
    PURGE = "purge"


@attrs.frozen
class AuditRecord:
    """One audited attempt.

    ``actor`` is the acting account id, or ``establishment:<UAI>`` for an
    establishment; ``login`` is the login typed (control characters
    escaped, cut to 64 characters), never a password; ``outcome`` is
    ``"success"`` or the error code.
    """

    at: datetime
    action: AuditAction
    outcome: str
    actor: str | None = None
    account_id: str | None = None
    login: str | None = None
    detail: str | None = None

    @property
    def is_failure(self) -> bool:
        """True unless the outcome is ``"success"``: the record of a failed attempt."""
        return self.outcome != "success"
