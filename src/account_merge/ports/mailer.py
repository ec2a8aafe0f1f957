"""The mailer port: how notices leave the library."""

from __future__ import annotations

from typing import Protocol

from account_merge.domain.notices import Notice

__all__ = ["Mailer"]


class Mailer(Protocol):
    """**Protocol:** sends one notice.

    ``send(notice)`` returns once the message is handed over (to an SMTP
    server, a framework's mail backend, a list in a test), and raises
    anything on failure: ``deliver_notices`` then keeps the notice for its
    next run and logs the failure without the notice's text or link.
    Implementations in this package: :class:`~account_merge.mailers.SmtpMailer`,
    :class:`~account_merge.contrib.django.mail.DjangoMailer`,
    :class:`~account_merge.testing.CapturingMailer`.
    """

    def send(self, notice: Notice) -> None: ...
