"""DjangoMailer: notices sent through Django's e-mail (``django.core.mail``).

::

    from account_merge.contrib.django.mail import DjangoMailer
    from account_merge.contrib.django.service import get_service

    get_service().deliver_notices(DjangoMailer())   # in a periodic task

It uses the project's ``EMAIL_BACKEND`` and ``DEFAULT_FROM_EMAIL`` unless
given others, so Django's test runner captures the notices in
``django.core.mail.outbox``.  Each message carries the notice's stable id
as its ``Message-ID`` (see :func:`account_merge.mailers.notice_message`).
Nothing is imported from Django before the first send.
"""

from __future__ import annotations

from typing import Any

from account_merge.domain.notices import Notice

__all__ = ["DjangoMailer"]


class DjangoMailer:
    """Sends each notice with ``django.core.mail.EmailMessage``; failures raise.

    *from_email* defaults to ``settings.DEFAULT_FROM_EMAIL``; *connection*
    to the backend of ``settings.EMAIL_BACKEND``; *domain* is the
    right-hand part of the ``Message-ID``.
    """

    def __init__(self, from_email: str | None = None, connection: Any = None, *,
                 domain: str = "account-merge") -> None:
        self.from_email = from_email
        self.connection = connection
        self.domain = domain

    def __repr__(self) -> str:
        return f"DjangoMailer(from_email={self.from_email!r})"

    def send(self, notice: Notice) -> None:
        """Hand *notice* to Django's e-mail backend (``fail_silently=False``)."""
        from django.core.mail import EmailMessage

        message_id = f"<{notice.id}@{self.domain}>" if notice.id else None
        headers = {"Auto-Submitted": "auto-generated", "Content-Language": notice.language}
        if message_id is not None:
            headers["Message-ID"] = message_id
        EmailMessage(subject=notice.subject, body=notice.body, from_email=self.from_email,
                     to=[notice.to], headers=headers,
                     connection=self.connection).send(fail_silently=False)
