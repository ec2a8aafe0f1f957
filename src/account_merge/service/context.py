"""What every use case is given: the store, the verifier, the clock and the policies.

A use case module receives one :class:`Context` and reads as its steps;
the few things every one of them does (read the clock, retry a step that
lost a race, audit a failure) are here, once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

import attrs

from account_merge.domain.audit import AuditAction, AuditRecord
from account_merge.domain.validation import check_aware, escape_for_log
from account_merge.exceptions import AccountMergeError, ConcurrentUpdate
from account_merge.ports.clock import Clock
from account_merge.ports.storage import ChangeSet, Storage, UnitOfWork
from account_merge.ports.verifier import CredentialVerifier
from account_merge.service.links import RecoveryOptions
from account_merge.service.policies import Policies

__all__ = ["WRITE_RETRIES", "Context", "logger"]

logger = logging.getLogger("account_merge")

T = TypeVar("T")

#: How many times a writing step runs when it loses races to concurrent writers.
WRITE_RETRIES = 3


@attrs.frozen
class Context:
    """The service's collaborators, shared by every use case."""

    storage: Storage
    verifier: CredentialVerifier
    clock: Clock
    policies: Policies
    #: the host's secret key and link templates, for the way back (recovery, notices)
    recovery: RecoveryOptions = attrs.field(factory=RecoveryOptions)

    def now(self) -> datetime:
        """The clock's time, checked to be timezone-aware."""
        return check_aware("clock()", self.clock())

    def writing(self) -> UnitOfWork:
        """A new writing unit of work."""
        return self.storage.unit_of_work(write=True)

    def reading(self) -> UnitOfWork:
        """A new read-only unit of work."""
        return self.storage.unit_of_work(write=False)

    def retry(self, step: Callable[[], T]) -> T:
        """Run a writing step again when it lost a race to a concurrent writer."""
        for attempt in range(WRITE_RETRIES):
            try:
                return step()
            except ConcurrentUpdate:
                if attempt == WRITE_RETRIES - 1:
                    raise
                logger.debug("concurrent update, retrying (%d)", attempt + 1)
        raise AssertionError("unreachable")  # pragma: no cover

    def audit(self, record: AuditRecord) -> None:
        """Write one audit record in a transaction of its own (a failure, mostly)."""
        self.storage.write(ChangeSet(audit=(record,)))

    def guarded(self, action: AuditAction, login: str | None, step: Callable[[], T],
                actor: str | None = None) -> T:
        """Run a writing step (with retries); audit the error it ends with, if any."""
        try:
            return self.retry(step)
        except AccountMergeError as error:
            self.audit(AuditRecord(at=self.now(), action=action, outcome=error.code,
                                   actor=actor,
                                   login=escape_for_log(login) if login else None))
            raise
