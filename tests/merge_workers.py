"""Work for the processes the PostgreSQL race tests start (a light module to import)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from account_merge.domain.throttle import ThrottlePolicy
from account_merge.exceptions import AccountMergeError
from account_merge.service import MergeService
from account_merge.storage.sqlalchemy import SQLAlchemyStorage
from account_merge.testing import CountingVerifier, FakeClock


def merge_worker(url: str, prefix: str, barrier: Any, jobs: list[tuple[str, str, str]],
                 results: Any, *, throttle: ThrottlePolicy, start: datetime) -> None:
    """One merge per job, each released by the barrier together with the other processes.

    Puts on *results* the outcomes (the principal id of a receipt, or an
    error code) and the number of password verifications this process ran.
    """
    storage = SQLAlchemyStorage.from_url(url, prefix=prefix)
    verifier = CountingVerifier()
    service = MergeService(storage, verifier, FakeClock(start.astimezone(UTC)),
                           throttle=throttle)
    outcomes = []
    for principal_id, login, password in jobs:
        barrier.wait(60)
        try:
            outcomes.append(service.merge(principal_id, login, password).principal_id)
        except AccountMergeError as error:
            outcomes.append(error.code)
    storage.close()
    results.put((outcomes, verifier.verifications))
