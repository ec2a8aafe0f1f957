"""Notices: the e-mails a parent receives, and the state of their delivery.

A :class:`Notice` is made from an outbox event when it is sent
(``MergeService.deliver_notices``), never before: a notice with a link
carries a token, and tokens are never stored.  What is stored is a
:class:`NoticeState` per notice to send: its stable id, the outbox
position of its event, its recipient's role, how many times sending it
failed, and whether it went.
"""

from __future__ import annotations

import enum
import hashlib
import json
from datetime import datetime

import attrs

from account_merge.domain.events import Event

__all__ = ["Notice", "NoticeKind", "NoticeState", "NoticeStatus", "notice_id"]


class NoticeKind(enum.Enum):
    """What a notice tells."""

    #: a link to choose a new password (to the account's confirmed address)
    PASSWORD_RESET = "password_reset"
    #: the logins of the live accounts of an address
    LOGIN_REMINDER = "login_reminder"
    #: a link confirming an address (to that address, not yet on record)
    EMAIL_VERIFICATION = "email_verification"
    #: the address was replaced (to the old address)
    EMAIL_CHANGED = "email_changed"
    #: the password was changed by its owner
    PASSWORD_CHANGED = "password_changed"
    #: the password was reset with a link
    PASSWORD_RESET_DONE = "password_reset_done"
    #: the establishment printed a new letter; the old password is dead
    LETTER_REISSUED = "letter_reissued"
    #: another account was merged into this one
    ACCOUNT_MERGED = "account_merged"
    #: this account was merged into another one
    ACCOUNT_ABSORBED = "account_absorbed"


@attrs.frozen
class Notice:
    """One e-mail to send: to one address, in one language, with at most one link.

    ``url`` is the link the notice carries (a password-reset or
    e-mail-confirmation link, holding a token; a sign-in page), or None when
    there is no template for it.  ``id`` is stable across attempts: a mail
    server may de-duplicate on it (``SmtpMailer`` makes it the
    ``Message-ID``).  ``body`` and ``url`` never show in a ``repr``: they may
    hold a token.
    """

    to: str
    subject: str
    body: str = attrs.field(repr=False)
    kind: NoticeKind
    language: str
    url: str | None = attrs.field(default=None, repr=False)
    id: str | None = None


class NoticeStatus(enum.Enum):
    """Where a notice stands: to send, sent, or given up (dead link, no address, failures)."""

    PENDING = "pending"
    SENT = "sent"
    DROPPED = "dropped"


@attrs.frozen
class NoticeState:
    """The delivery state of one notice, as a store of the ``notices`` tier keeps it.

    ``role`` names the notice among those its event gives (``"reset-0"``,
    ``"principal"``, ``"old-address"``...); ``attempts`` counts failed sends;
    ``updated_at`` is the time of the last change (the last attempt).
    """

    id: str
    position: int
    role: str
    status: NoticeStatus = NoticeStatus.PENDING
    attempts: int = 0
    updated_at: datetime | None = None


def notice_id(position: int, role: str, event: Event) -> str:
    """The stable id of the notice *role* of the event at outbox *position*.

    The position orders it; a digest of the event keeps ids of two stores
    (a test and a production database, say) from meeting.
    """
    content = json.dumps([event.name, event.to_payload()], sort_keys=True, default=str)
    digest = hashlib.blake2b(content.encode("utf-8", "surrogatepass"), digest_size=6)
    return f"{position}.{role}.{digest.hexdigest()}"
