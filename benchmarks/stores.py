"""The stores the benchmarks run on: in memory, SQLite, PostgreSQL when available."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from account_merge import InMemoryStorage, SQLiteStorage
from account_merge.ports import Storage
from postgres import Postgres, postgres_server


@dataclass
class StoreKind:
    """One kind of store: a name, the P1 and P2 targets, and a factory of fresh, empty stores.

    ``p1_target`` bounds the library's own cost (its work with argon2's
    cheapest parameters) as a share of one bare verification at the
    defaults: 0.002 is 0.2 %.
    """

    name: str
    p1_target: float
    p2_target: float | None
    factory: Callable[[str], Storage]
    made: list[Storage] = field(default_factory=list)

    def make(self, label: str) -> Storage:
        """A fresh, empty store (*label* names its file or database)."""
        store = self.factory(label)
        self.made.append(store)
        return store

    def close_all(self) -> None:
        for store in self.made:
            with contextlib.suppress(Exception):
                store.close()
        self.made.clear()


@dataclass
class Stores:
    """The kinds available in this run, and why the others are not."""

    kinds: list[StoreKind]
    skipped: dict[str, str]
    workdir: Path
    postgres: Postgres | None = None
    #: Why PostgreSQL cannot be used in this run ("" when it can).
    postgres_missing: str = ""

    def get(self, name: str) -> StoreKind | None:
        return next((k for k in self.kinds if k.name == name), None)


@contextlib.contextmanager
def open_stores(workdir: Path | None, *, postgres: bool = True,
                only: set[str] | None = None) -> Iterator[Stores]:
    """The kinds of store this machine can run (those named in *only*), files in *workdir*."""
    folder = Path(tempfile.mkdtemp(prefix="am-bench-", dir=workdir))
    kinds = [
        StoreKind("memory", 0.002, None, lambda label: InMemoryStorage()),
        StoreKind("sqlite", 0.007, 1.25, lambda label: SQLiteStorage(folder / f"{label}.sqlite3")),
    ]
    if only is not None:
        kinds = [kind for kind in kinds if kind.name in only]
    skipped: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        server: Postgres | None = None
        missing = "not asked for (--no-postgres)"
        if postgres:
            server, missing = stack.enter_context(postgres_server(folder))
        if server is not None and (only is None or "postgresql" in only):
            kinds.append(StoreKind("postgresql", 0.02, 1.25, server.store))
        elif only is None or "postgresql" in only:
            skipped["postgresql"] = missing
        try:
            yield Stores(kinds, skipped, folder, server, missing)
        finally:
            for kind in kinds:
                kind.close_all()
            shutil.rmtree(folder, ignore_errors=True)
