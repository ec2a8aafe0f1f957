"""P4: bytes per account, in memory (tracemalloc) and in the SQLite file.

Two kinds of account are weighed: an account as ``issue_account`` stores
it (the account, its credential with an argon2 hash at argon2-cffi's
defaults, one child and its link, its event in the outbox and its audit
record), and an account as ``bulk_load`` stores it (the same without the
event and the audit record).  The hash is made once: the verifier below
hands out that one real hash, so weighing a large store costs no argon2
time.
"""

from __future__ import annotations

import gc
import os
import sqlite3
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import argon2

from account_merge import Child, InMemoryStorage, MergeService, SQLiteStorage
from account_merge.ports import Storage
from account_merge.testing import bulk_load
from ops import ESTABLISHMENT, PROVISIONAL_PASSWORD


class OneHashVerifier:
    """A verifier that gives every password the same real argon2 hash (for weighing only)."""

    def __init__(self, password_hash: str) -> None:
        self.password_hash = password_hash

    def hash(self, password: str) -> str:
        return self.password_hash

    def verify(self, password_hash: str | None, password: str) -> bool:
        return False

    def needs_rehash(self, password_hash: str) -> bool:
        return False


Fill = Callable[[Storage, int, int, str], None]


def _issue(storage: Storage, start: int, count: int, password_hash: str) -> None:
    service = MergeService(storage, OneHashVerifier(password_hash))
    families = ((f"Responsable {n}", [Child(f"ine-{n:08d}", f"Enfant{n}", "Robert",
                                            ESTABLISHMENT.uai)])
                for n in range(start, start + count))
    for _letter in service.issue_accounts(ESTABLISHMENT, families, workers=1):
        pass


def _bulk(storage: Storage, start: int, count: int, password_hash: str) -> None:
    bulk_load(storage, ESTABLISHMENT, count, password_hash=password_hash, prefix=f"w{start}")


FILLERS: dict[str, Fill] = {"issued": _issue, "bulk": _bulk}


def _in_memory(fill: Fill, count: int, password_hash: str) -> float:
    storage = InMemoryStorage()
    fill(storage, 0, 1, password_hash)  # the establishment, the first entries of every table
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        fill(storage, 1, count, password_hash)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return (after - before) / count


def _file_size(path: Path) -> int:
    connection = sqlite3.connect(path)
    try:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        connection.close()
    return sum(os.path.getsize(p) for p in (path, Path(f"{path}-wal")) if p.exists())


def _in_sqlite(fill: Fill, count: int, password_hash: str, folder: Path) -> float:
    path = folder / f"footprint-{fill.__name__.strip('_')}.sqlite3"
    storage = SQLiteStorage(path)
    try:
        fill(storage, 0, 1, password_hash)
        storage.close()
        before = _file_size(path)
        fill(storage, 1, count, password_hash)
        storage.close()
        return (_file_size(path) - before) / count
    finally:
        storage.close()


@dataclass
class P4Result:
    accounts: int
    hash_length: int
    memory: dict[str, float]  # kind -> bytes per account
    sqlite: dict[str, float]


def measure_p4(folder: Path, count: int) -> P4Result:
    password_hash = argon2.PasswordHasher().hash(PROVISIONAL_PASSWORD)
    memory = {kind: _in_memory(fill, count, password_hash) for kind, fill in FILLERS.items()}
    on_disk = {kind: _in_sqlite(fill, count, password_hash, folder)
               for kind, fill in FILLERS.items()}
    return P4Result(count, len(password_hash), memory, on_disk)
