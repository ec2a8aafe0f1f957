"""Signed tokens for password resets and e-mail confirmations: nothing stored.

A token is an HMAC-SHA256 signature, under a key derived from the host's
secret key, over what the token is for, the account, the second it was
issued, the address to confirm (for an e-mail confirmation), and the
account's *binding*: a keyed digest of its state (status, address on
record, credential hash).  So a token

- cannot be made or altered without the secret key (256-bit signature,
  compared in constant time);
- works for one account, one purpose, for a limited time (the service
  checks ``issued_at`` against its policy);
- works once: using it changes the state it is bound to (a reset replaces
  the credential hash, whose salt is new even for the same password; a
  confirmation replaces the address on record), and so does any password
  change, reset, merge or new letter, which kills every older token.

Only the binding (128 bits of HMAC, useless without the key) is kept in
the outbox, so that the link can be made again when the notice is sent;
the token itself is never stored.

>>> from datetime import UTC, datetime
>>> from account_merge.domain.account import Account, AccountStatus, Role
>>> signer = TokenSigner("a host secret key, long enough")
>>> account = Account(id="a1", login="claire.robert", role=Role.RESPONSABLE,
...                   status=AccountStatus.ACTIVE, display_name="Claire Robert",
...                   establishment_uai="0860001S", created_at=datetime(2026, 9, 1, tzinfo=UTC),
...                   email="claire@example.org")
>>> claims = TokenClaims(TokenPurpose.PASSWORD_RESET, "a1", datetime(2026, 9, 1, 8, tzinfo=UTC))
>>> token = signer.sign(claims, signer.binding(account, None))
>>> signer.read(token) == claims
True
>>> signer.verify(token, signer.binding(account, None))
True
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import re
from datetime import UTC, datetime

import attrs

from account_merge.domain.account import Account, Credential
from account_merge.domain.secret import Secret
from account_merge.domain.validation import check_identifier
from account_merge.exceptions import InvalidInput, InvalidToken

__all__ = [
    "MAX_TOKEN_LENGTH",
    "MIN_SECRET_KEY_LENGTH",
    "TokenClaims",
    "TokenPurpose",
    "TokenSigner",
]

#: Shortest secret key accepted (characters, or bytes).
MIN_SECRET_KEY_LENGTH = 16

#: Longest text read as a token; anything longer is ``invalid_token`` at once.
MAX_TOKEN_LENGTH = 1024

_VERSION = "1"
_B64 = re.compile(r"[A-Za-z0-9_-]+")


class TokenPurpose(enum.Enum):
    """What a token opens."""

    PASSWORD_RESET = "password_reset"
    EMAIL_VERIFICATION = "email_verification"


_CODES = {TokenPurpose.PASSWORD_RESET: "r", TokenPurpose.EMAIL_VERIFICATION: "e"}
_PURPOSES = {code: purpose for purpose, code in _CODES.items()}


def _to_the_second(at: datetime) -> datetime:
    return datetime.fromtimestamp(int(at.timestamp()), UTC)


@attrs.frozen
class TokenClaims:
    """What a token says: its purpose, its account, when it was issued, the address to confirm.

    ``issued_at`` is kept to the second, in UTC.
    """

    purpose: TokenPurpose
    account_id: str
    issued_at: datetime = attrs.field(converter=_to_the_second)
    email: str | None = None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    """The bytes of unpadded base64url *text*, which must be their one canonical spelling."""
    if not _B64.fullmatch(text):
        raise ValueError("not base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(data) != text:  # unused low bits set: another spelling of the same bytes
        raise ValueError("not canonical base64url")
    return data


class TokenSigner:
    """Signs and checks tokens with keys derived from the host's secret key.

    *secret_key* is text or bytes of at least :data:`MIN_SECRET_KEY_LENGTH`
    (or a :class:`~account_merge.Secret`); it never shows in a ``repr``.
    """

    __slots__ = ("_binding_key", "_token_key")

    def __init__(self, secret_key: str | bytes | Secret) -> None:
        if isinstance(secret_key, Secret):
            secret_key = secret_key.reveal()
        if isinstance(secret_key, str):
            secret_key = secret_key.encode("utf-8", "surrogatepass")
        if not isinstance(secret_key, bytes):
            raise InvalidInput("secret_key", "must be a string or bytes")
        if len(secret_key) < MIN_SECRET_KEY_LENGTH:
            raise InvalidInput("secret_key",
                               f"must be at least {MIN_SECRET_KEY_LENGTH} characters long")
        self._token_key = hmac.digest(secret_key, b"account_merge.tokens.v1", "sha256")
        self._binding_key = hmac.digest(secret_key, b"account_merge.binding.v1", "sha256")

    def __repr__(self) -> str:
        return "TokenSigner(secret_key='********')"

    def __reduce__(self) -> str:
        raise TypeError("a TokenSigner cannot be pickled")

    def binding(self, account: Account | None, credential: Credential | None) -> str:
        """The account's binding: 128 bits of HMAC over its status, address and credential.

        With no account (an unknown identifier) the same work is done over
        empty values, so that both cost the same.
        """
        parts = ("", "", "", "") if account is None else (
            account.id, account.status.value, account.email or "",
            credential.password_hash if credential is not None else "")
        message = "\n".join(parts).encode("utf-8", "surrogatepass")
        return hmac.new(self._binding_key, message, hashlib.sha256).hexdigest()[:32]

    def _signature(self, body: str, binding: str) -> bytes:
        message = f"{body}.{binding}".encode("utf-8", "surrogatepass")
        return hmac.digest(self._token_key, message, "sha256")

    def sign(self, claims: TokenClaims, binding: str) -> str:
        """The token of *claims*, bound to *binding*."""
        fields = (_VERSION + _CODES[claims.purpose], str(int(claims.issued_at.timestamp())),
                  claims.account_id, claims.email or "")
        body = _b64("\n".join(fields).encode("utf-8", "surrogatepass"))
        return f"{body}.{_b64(self._signature(body, binding))}"

    @staticmethod
    def read(token: object) -> TokenClaims:
        """What *token* claims, not yet checked; ``invalid_token`` if it cannot be read.

        ``invalid_input`` if *token* is not a string at all.
        """
        if not isinstance(token, str):
            raise InvalidInput("token", f"must be a string, not {type(token).__name__}")
        try:
            if len(token) > MAX_TOKEN_LENGTH:
                raise ValueError("too long")
            body, signature = token.split(".")
            if len(_unb64(signature)) != hashlib.sha256().digest_size:
                raise ValueError("truncated")
            header, issued, account_id, email = _unb64(body).decode("utf-8").split("\n")
            if len(header) != 2 or header[0] != _VERSION or not issued.isdigit():
                raise ValueError("malformed")
            check_identifier("account_id", account_id)
            return TokenClaims(_PURPOSES[header[1]], account_id,
                               datetime.fromtimestamp(int(issued), UTC), email or None)
        except (ValueError, KeyError, OverflowError, OSError, binascii.Error,
                UnicodeDecodeError):
            raise InvalidToken() from None

    def verify(self, token: str, binding: str) -> bool:
        """True if *token* was signed by this key for an account in the state of *binding*."""
        body, _, signature = token.partition(".")
        try:
            given = _unb64(signature)
        except (ValueError, binascii.Error):
            return False
        return hmac.compare_digest(given, self._signature(body, binding))
