"""Mailers: where notices go.  :class:`SmtpMailer` speaks SMTP with the standard library.

>>> mailer = SmtpMailer("smtp.example.org", sender="ENT <ne-pas-repondre@ent.example>",
...                     starttls=True, username="ent", password="secret")
>>> mailer.port, "secret" in repr(mailer)
(587, False)

Nothing connects until :meth:`SmtpMailer.send`.  The Django mailer is
:class:`account_merge.contrib.django.mail.DjangoMailer`; tests use
:class:`account_merge.testing.CapturingMailer`.
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from types import MappingProxyType

from account_merge.domain.notices import Notice
from account_merge.domain.secret import Secret
from account_merge.exceptions import InvalidInput

__all__ = ["SmtpMailer", "notice_message"]

#: Headers of every notice: it is sent by a machine, and replies go nowhere useful.
_HEADERS = MappingProxyType({"Auto-Submitted": "auto-generated"})


def notice_message(notice: Notice, sender: str, *, domain: str = "account-merge") -> EmailMessage:
    """The e-mail of *notice*: plain text in UTF-8, its id as the ``Message-ID``.

    The same notice sent twice (delivery is at least once) carries the same
    ``Message-ID``, ``<notice id@domain>``, on which a mail server may
    de-duplicate.
    """
    message = EmailMessage()
    message.set_content(notice.body)  # first: it replaces every Content-* header
    message["From"] = sender
    message["To"] = notice.to
    message["Subject"] = notice.subject
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = (f"<{notice.id}@{domain}>" if notice.id
                             else make_msgid(domain=domain))
    message["Content-Language"] = notice.language
    for name, value in _HEADERS.items():
        message[name] = value
    return message


class SmtpMailer:
    """Sends each notice through an SMTP server (stdlib ``smtplib``), one connection per notice.

    - *host*, *port*: the server (port 587 with ``starttls``, 465 with
      ``implicit_tls``, 25 otherwise);
    - *sender*: the ``From`` address;
    - *starttls*: upgrade the connection with STARTTLS before anything is
      sent (refused by the server: the send fails); *implicit_tls*: TLS
      from the start (SMTPS); *ssl_context*: the TLS context (default:
      :func:`ssl.create_default_context`, which checks the certificate);
    - *username*, *password*: authenticate (only over TLS, unless
      *allow_plain_auth*);
    - *timeout*: seconds for each network operation;
    - *domain*: the right-hand part of the ``Message-ID``.

    The password never shows in a ``repr``.
    """

    def __init__(self, host: str = "localhost", port: int | None = None, *, sender: str,
                 starttls: bool = False, implicit_tls: bool = False,
                 username: str | None = None, password: str | Secret | None = None,
                 ssl_context: ssl.SSLContext | None = None, timeout: float = 30.0,
                 domain: str = "account-merge", allow_plain_auth: bool = False) -> None:
        if starttls and implicit_tls:
            raise InvalidInput("starttls", "choose STARTTLS or implicit TLS, not both")
        if (username is None) != (password is None):
            raise InvalidInput("username", "give both a username and a password, or neither")
        if username is not None and not (starttls or implicit_tls or allow_plain_auth):
            raise InvalidInput("username", "authentication without TLS sends the password "
                                           "in clear: use starttls or implicit_tls")
        if not isinstance(sender, str) or "@" not in sender:
            raise InvalidInput("sender", "must be an e-mail address")
        self.host = host
        self.port = port if port is not None else 465 if implicit_tls else 587 if starttls \
            else 25
        self.sender = sender
        self.starttls = starttls
        self.implicit_tls = implicit_tls
        self.username = username
        self._password = password if password is None or isinstance(password, Secret) \
            else Secret(password)
        self.ssl_context = ssl_context
        self.timeout = timeout
        self.domain = domain

    def __repr__(self) -> str:
        return (f"SmtpMailer(host={self.host!r}, port={self.port}, sender={self.sender!r}, "
                f"starttls={self.starttls}, implicit_tls={self.implicit_tls}, "
                f"username={self.username!r})")

    def _context(self) -> ssl.SSLContext:
        return self.ssl_context if self.ssl_context is not None else ssl.create_default_context()

    def _connect(self) -> smtplib.SMTP:
        if self.implicit_tls:
            return smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout,
                                    context=self._context())
        return smtplib.SMTP(self.host, self.port, timeout=self.timeout)

    def send(self, notice: Notice) -> None:
        """Send *notice*; raises ``smtplib.SMTPException`` or ``OSError`` on failure."""
        message = notice_message(notice, self.sender, domain=self.domain)
        with self._connect() as server:
            if self.starttls:
                server.starttls(context=self._context())
                server.ehlo()
            if self.username is not None and self._password is not None:
                server.login(self.username, self._password.reveal())
            server.send_message(message)
