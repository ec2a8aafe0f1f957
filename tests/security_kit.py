"""Instruments for the security tests, usable on any store.

- :class:`InstrumentedStorage` wraps any :class:`~account_merge.ports.Storage`
  and, for every unit-of-work method called through it (``fetch``, with
  ``(count)`` or ``(lock)`` when it counts or locks, ``apply``, ``commit``...,
  and the store's ``write``), records its name,
  notes every account id, login key, throttle key... it saw (the
  *universe* of the store), sleeps where a test asks for it (to widen a
  race window), and fails at the k-th write when armed to.
- :func:`snapshot` reads everything in the universe through the store's
  own protocol, and :func:`changes` compares two snapshots: this works on
  every store, present and future, without knowing its tables.
- :func:`violations` lists the breaches of the design's invariants I1, I2,
  I4 and I8 found in a store.
- :func:`race` runs calls in threads released together.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import attrs

from account_merge.domain.account import Account, AccountStatus, Credential, Role
from account_merge.domain.child import ChildLink
from account_merge.domain.establishment import Establishment
from account_merge.domain.events import AccountsMerged
from account_merge.domain.throttle import ThrottleState
from account_merge.exceptions import StorageError
from account_merge.ports import (
    ChangeSet,
    Fetch,
    NewAccount,
    Storage,
    StoredReceipt,
    UnitOfWork,
)
from account_merge.testing import race as race_threads

#: The calls that change the store: applying a change set, counting attempts, committing.
WRITE_METHODS = frozenset({"apply", "fetch(count)", "commit", "write"})

#: More rows than any test store holds.
EVERYTHING = 10**6


class InjectedFault(StorageError):
    """The failure an armed :class:`InstrumentedStorage` raises at a write."""

    def __init__(self, method: str, count: int) -> None:
        super().__init__("injected", f"fault at write {count} ({method})")


@attrs.define
class Universe:
    """Every key a store was asked about or given, by kind."""

    accounts: set[str] = attrs.Factory(set)
    logins: set[str] = attrs.Factory(set)
    throttles: set[str] = attrs.Factory(set)
    receipts: set[tuple[str, str]] = attrs.Factory(set)
    establishments: set[str] = attrs.Factory(set)
    children: set[str] = attrs.Factory(set)

    def copy(self) -> Universe:
        return Universe(*(set(getattr(self, f.name)) for f in attrs.fields(Universe)))

    def note(self, args: tuple[Any, ...], result: Any) -> None:
        """Learn the keys in a call's arguments and result."""
        for value in (*args, result):
            self._note_value(value)

    def _note_value(self, value: Any) -> None:
        if isinstance(value, (list, tuple, set, frozenset)):
            for item in value:
                self._note_value(item)
        elif isinstance(value, Mapping):
            for item in value.values():
                self._note_value(item)
        elif isinstance(value, str) or value is None:
            return
        elif isinstance(value, Fetch):
            self.accounts.update((*value.accounts, *value.links, *value.absorbed))
            self.logins.update(value.logins)
            self.throttles.update((*value.throttles, *value.count))
            self.receipts.update(value.receipts)
            self.establishments.update(value.establishments)
        elif isinstance(value, NewAccount):
            self.logins.add(value.login_key)
            self._note_value(value.account)
        elif isinstance(value, Account):
            self.accounts.add(value.id)
            if value.merged_into is not None:
                self.accounts.add(value.merged_into)
        elif isinstance(value, ChildLink):
            self.accounts.update({value.account_id, value.origin_account_id})
            self.children.add(value.child.id)
        elif isinstance(value, Credential):
            self.accounts.add(value.account_id)
        elif isinstance(value, ThrottleState):
            self.throttles.add(value.key)
        elif isinstance(value, StoredReceipt):
            self.receipts.add((value.principal_id, value.key))
        elif isinstance(value, Establishment):
            self.establishments.add(value.uai)
        elif attrs.has(type(value)):  # Fetched, ChangeSet, AccountRecord, SignIn...
            for field in attrs.fields(type(value)):
                self._note_value(getattr(value, field.name))


class InstrumentedStorage:
    """Wraps a store: records, widens race windows, injects faults (module docstring).

    *delays* maps a unit-of-work method name to the seconds slept before
    the wrapped store runs it.
    """

    def __init__(self, inner: Storage, *, delays: dict[str, float] | None = None) -> None:
        self.inner = inner
        self.delays = dict(delays or {})
        self.universe = Universe()
        self.calls: list[str] = []
        self.writes = 0
        self.fail_at: int | None = None
        self.persistent = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"InstrumentedStorage({self.inner!r})"

    def unit_of_work(self, *, write: bool = True) -> UnitOfWork:
        return _InstrumentedUnitOfWork(self, self.inner.unit_of_work(write=write),  # type: ignore[return-value]
                                       write=write)

    def write(self, changes: ChangeSet) -> None:
        self._before("write")
        self.inner.write(changes)
        self._after((changes,), None)

    def close(self) -> None:
        self.inner.close()

    # faults -----------------------------------------------------------------------
    def arm(self, fail_at: int, *, persistent: bool = False) -> None:
        """Fail the *fail_at*-th write from now (and every later one if *persistent*)."""
        with self._lock:
            self.writes, self.fail_at, self.persistent = 0, fail_at, persistent

    def disarm(self) -> None:
        with self._lock:
            self.fail_at = None

    @contextmanager
    def counting_writes(self) -> Iterator[Callable[[], int]]:
        """Count the writes made in the block; the callable gives the count."""
        with self._lock:
            self.writes, self.fail_at = 0, None
        yield lambda: self.writes

    # recording --------------------------------------------------------------------
    @contextmanager
    def recording(self) -> Iterator[list[str]]:
        """The names of the unit-of-work calls made in the block, in order."""
        with self._lock:
            start = len(self.calls)
        taken: list[str] = []
        try:
            yield taken
        finally:
            with self._lock:
                taken.extend(self.calls[start:])

    def _before(self, name: str) -> None:
        """Record a call; fail it if it is the armed write; sleep if a delay is set."""
        count = self._tick(name)
        if count is not None:
            raise InjectedFault(name, count)
        delay = self.delays.get(name)
        if delay:
            time.sleep(delay)

    def _tick(self, name: str) -> int | None:
        """Record a call; the write's number if it is to fail, else None."""
        with self._lock:
            self.calls.append(name)
            if name not in WRITE_METHODS:
                return None
            self.writes += 1
            fault = self.fail_at is not None and (
                self.writes == self.fail_at
                or (self.persistent and self.writes > self.fail_at))
            return self.writes if fault else None

    def _after(self, args: tuple[Any, ...], result: Any) -> None:
        with self._lock:
            self.universe.note(args, result)


class _InstrumentedUnitOfWork:
    def __init__(self, storage: InstrumentedStorage, inner: UnitOfWork, *, write: bool) -> None:
        self._storage = storage
        self._inner = inner
        self._write = write

    def __enter__(self) -> _InstrumentedUnitOfWork:
        self._storage._before("begin(write)" if self._write else "begin(read)")
        self._inner.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._inner.__exit__(exc_type, exc, tb)

    def apply(self, changes: ChangeSet) -> None:
        """Each non-empty part of the change set is a write that may fail.

        A fault at a part applies the parts before it, then raises: a store
        that failed half-way through a change set, which its unit of work
        must roll back whole.
        """
        parts = [f.name for f in attrs.fields(ChangeSet) if getattr(changes, f.name)]
        for i, part in enumerate(parts):
            count = self._storage._tick("apply")
            if count is not None:
                done = ChangeSet(**{p: getattr(changes, p) for p in parts[:i]})
                if done:
                    self._inner.apply(done)
                raise InjectedFault(f"apply ({part})", count)
        delay = self._storage.delays.get("apply")
        if delay:
            time.sleep(delay)
        self._inner.apply(changes)
        self._storage._after((changes,), None)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._inner, name)
        if name.startswith("_") or not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            label = name
            if name == "fetch" and args and isinstance(args[0], Fetch):
                label = "fetch(count)" if args[0].count else (
                    "fetch(lock)" if args[0].lock else "fetch")
            self._storage._before(label)
            result = method(*args, **kwargs)
            self._storage._after(args, result)
            return result

        return call


# -- snapshots ------------------------------------------------------------------------
_EMPTY: dict[str, Any] = {"account": None, "credential": None, "links": [], "merged_into": [],
                          "login": None, "establishment": None, "receipt": None, "throttle": None}


def snapshot(storage: InstrumentedStorage, *, counters: bool = True) -> dict[tuple[Any, ...], Any]:
    """Everything the store holds about its universe, read through its protocol.

    With ``counters=False``, the failure counters and the audit trail are
    left out (a failed attempt may change them, by design).
    """
    universe = storage.universe.copy()
    ids = sorted(universe.accounts)
    out: dict[tuple[Any, ...], Any] = {}
    with storage.inner.unit_of_work(write=False) as uow:
        fetched = uow.fetch(Fetch(
            accounts=ids, links=ids, absorbed=ids, logins=sorted(universe.logins),
            establishments=sorted(universe.establishments), receipts=sorted(universe.receipts),
            throttles=sorted(universe.throttles) if counters else ()))
        for account_id in ids:
            record = fetched.accounts.get(account_id)
            out["account", account_id] = record.account if record else None
            out["credential", account_id] = record.credential if record else None
            out["links", account_id] = list(fetched.links[account_id])
            out["merged_into", account_id] = list(fetched.absorbed[account_id])
        for key in sorted(universe.logins):
            record = fetched.by_login.get(key)
            out["login", key] = record.account.id if record else None
        for uai in sorted(universe.establishments):
            out["establishment", uai] = fetched.establishments.get(uai)
        for principal_id, key in sorted(universe.receipts):
            out["receipt", principal_id, key] = fetched.receipts.get((principal_id, key))
        out["outbox",] = uow.unpublished(EVERYTHING)
        if counters:
            for key in sorted(universe.throttles):
                state = fetched.throttles[key]
                out["throttle", key] = None if state == ThrottleState(key) else state
            out["audit",] = uow.audit_records(None, EVERYTHING)
    return out


def changes(before: dict[tuple[Any, ...], Any],
            after: dict[tuple[Any, ...], Any]) -> dict[tuple[Any, ...], tuple[Any, Any]]:
    """What differs, as ``{key: (before, after)}``.

    A key the store had never seen before counts as empty then: every
    write goes through the wrapper, so an unseen key was never written.
    """
    out = {}
    for key in before.keys() | after.keys():
        old = before.get(key, _EMPTY.get(key[0]))
        new = after.get(key, _EMPTY.get(key[0]))
        if old != new:
            out[key] = (old, new)
    return out


# -- invariants -------------------------------------------------------------------------
def violations(storage: InstrumentedStorage, *, exclusive_children: bool = False) -> list[str]:
    """The breaches of invariants I1, I2, I4 and I8 in the store, described.

    With ``exclusive_children``, each child must be held by exactly one
    live account (true when every letter of the test names its own
    children); otherwise by at least one (I4: no child is lost).
    """
    universe = storage.universe.copy()
    found: list[str] = []
    holders: dict[str, list[str]] = {child: [] for child in universe.children}
    with storage.inner.unit_of_work(write=False) as uow:
        # Accounts other processes created are named by their events.
        outbox = uow.unpublished(EVERYTHING)
        for entry in outbox:
            event = entry.event
            for field in ("account_id", "new_account_id", "principal_id", "absorbed_id"):
                if isinstance(getattr(event, field, None), str):
                    universe.accounts.add(getattr(event, field))
            for child in getattr(event, "child_ids", ()) or getattr(event, "moved_child_ids", ()):
                holders.setdefault(child, [])
        ids = sorted(universe.accounts)
        fetched = uow.fetch(Fetch(accounts=ids, links=ids, absorbed=ids))
        accounts = {i: r.account for i, r in fetched.accounts.items()}
        holder_ids = sorted({a.merged_into for a in accounts.values() if a.merged_into})
        holders_fetched = uow.fetch(Fetch(accounts=holder_ids, absorbed=holder_ids))
        for account in accounts.values():
            links = fetched.links[account.id]
            if account.status is not AccountStatus.MERGED:
                for link in links:
                    holders.setdefault(link.child.id, []).append(account.id)
                continue
            # I1 and I2: absorbed, responsable, dead, one hop from a live responsable.
            if account.role is not Role.RESPONSABLE:
                found.append(f"I1: pupil account {account.id} was absorbed")
            if links:
                found.append(f"I2: absorbed account {account.id} still holds children")
            record = holders_fetched.accounts.get(account.merged_into or "-")
            holder = record.account if record is not None else None
            if holder is None or not holder.is_live:
                found.append(f"I2: {account.id} is not one hop from a live account "
                             f"(merged into {account.merged_into})")
            elif holder.role is not Role.RESPONSABLE:
                found.append(f"I1: {account.id} was absorbed by a pupil account")
            elif account.id not in {a.id for a in holders_fetched.absorbed[holder.id]}:
                found.append(f"I2: {holder.id} does not list {account.id} as merged into it")
        absorbed = [e.event.absorbed_id for e in outbox if isinstance(e.event, AccountsMerged)]
    for child, live in holders.items():
        if not live:
            found.append(f"I4: child {child} is held by no live account")
        elif exclusive_children and len(live) > 1:
            found.append(f"I4: child {child} is held by {len(live)} live accounts")
    for account_id in set(absorbed):
        if absorbed.count(account_id) > 1:
            found.append(f"I8: account {account_id} was absorbed {absorbed.count(account_id)} "
                         f"times")
        account = accounts.get(account_id)
        if account is None or account.status is not AccountStatus.MERGED:
            found.append(f"I8: absorbed account {account_id} is not MERGED")
    return found


# -- threads ----------------------------------------------------------------------------
def race(workers: int, call: Callable[[int], Any]) -> list[Any]:
    """``call(i)`` in *workers* threads released together: the results, or the exceptions."""
    return race_threads(workers, call, catch=Exception)

