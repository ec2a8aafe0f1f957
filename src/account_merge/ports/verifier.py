"""The credential verifier port: hashing and checking passwords."""

from __future__ import annotations

from typing import Protocol

__all__ = ["CredentialVerifier"]


class CredentialVerifier(Protocol):
    """**Protocol:** hashes and checks passwords.

    ``verify`` never raises for a wrong password or a malformed hash: it
    returns ``False``.  Called with ``password_hash=None`` (no such
    account), it does the same work against a dummy hash and returns
    ``False``, so that every failure costs one verification (rule I7).
    """

    def hash(self, password: str) -> str:
        """A new hash of *password* with the current parameters."""
        ...

    def verify(self, password_hash: str | None, password: str) -> bool:
        """True if *password* matches *password_hash*."""
        ...

    def needs_rehash(self, password_hash: str) -> bool:
        """True if *password_hash* was made with other parameters than the current ones."""
        ...
