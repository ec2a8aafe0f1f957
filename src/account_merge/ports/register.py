"""Storage tier ``register``: the school's register as the store keeps it.

A store offers the tier by having the four methods of :class:`Register`
on its units of work.  What it keeps:

- a :class:`~account_merge.domain.register.RegisterRecord` per
  ``(establishment_uai, external_id)``: the account issued from that
  entry of the register and the entry as last synced (children included);
  records are replaced, never deleted by a sync;
- a :class:`Closure` per account the register closed
  (:attr:`~account_merge.domain.account.AccountStatus.CLOSED`), with the
  time it was closed: the account itself is stored, as every account, by
  the core tier, and a store of this tier stores the status ``closed``.

What a sync needs in bulk is read a page at a time, each page in a unit
of work of its own, so that a register of an académie is read in one pass
with memory flat in its size:

- :meth:`Register.register_page`: the establishment's records;
- :meth:`Register.linked_children_page`: the ids of the children its
  letters gave to responsable accounts.

Both page in a stable order the store chooses (by external id, by child
id) and resume after ``cursor``, an opaque string the previous page gave
(None to start); a page of fewer than ``limit`` items ends with a None
cursor.  A record or link added during the pass may or may not be seen;
none present from the first page to the last is missed or seen twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

import attrs

from account_merge.domain.child import ChildLink
from account_merge.domain.register import RegisterRecord

__all__ = [
    "Closure",
    "Register",
    "RegisterChanges",
    "RegisterFetch",
    "RegisterFetched",
    "RegisterPage",
]

_EMPTY: Mapping[Any, Any] = MappingProxyType({})


def _tuple(value: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(value)


@attrs.frozen
class Closure:
    """An account the register closed, and when."""

    account_id: str
    establishment_uai: str
    closed_at: datetime


@attrs.frozen(kw_only=True)
class RegisterFetch:
    """What one step reads of the register, in one :meth:`Register.register_fetch` call.

    - ``entries``: records by ``(establishment_uai, external_id)``;
    - ``accounts``: the records (of every establishment) whose account is
      one of these ids;
    - ``origin_links``: for these child ids, the links that letters of
      ``establishment`` gave to responsable accounts (any account, live or
      closed), in link order per account;
    - ``closures``: closures by account id.
    """

    entries: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_tuple)
    accounts: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    origin_links: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    establishment: str | None = None
    closures: tuple[str, ...] = attrs.field(default=(), converter=_tuple)

    def __attrs_post_init__(self) -> None:
        if self.origin_links and self.establishment is None:
            raise ValueError("RegisterFetch.origin_links needs RegisterFetch.establishment")


@attrs.frozen(kw_only=True)
class RegisterFetched:
    """What :meth:`Register.register_fetch` found, keyed as asked (absent keys left out,
    except ``by_account`` and ``origin_links``, which have every key asked, maybe empty)."""

    entries: Mapping[tuple[str, str], RegisterRecord] = _EMPTY
    by_account: Mapping[str, tuple[RegisterRecord, ...]] = _EMPTY
    origin_links: Mapping[str, tuple[ChildLink, ...]] = _EMPTY
    closures: Mapping[str, Closure] = _EMPTY


@attrs.frozen(kw_only=True)
class RegisterChanges:
    """What one step writes of the register, applied by :meth:`Register.register_apply`:
    ``put`` records inserted or replaced (by key), ``drop`` records deleted
    (absent ones ignored), ``close`` closures inserted or replaced,
    ``reopen`` closures deleted (by account id; absent ones ignored)."""

    put: tuple[RegisterRecord, ...] = attrs.field(default=(), converter=_tuple)
    drop: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_tuple)
    close: tuple[Closure, ...] = attrs.field(default=(), converter=_tuple)
    reopen: tuple[str, ...] = attrs.field(default=(), converter=_tuple)

    def __add__(self, other: RegisterChanges) -> RegisterChanges:
        return RegisterChanges(put=self.put + other.put, drop=self.drop + other.drop,
                               close=self.close + other.close, reopen=self.reopen + other.reopen)

    def __bool__(self) -> bool:
        return bool(self.put or self.drop or self.close or self.reopen)


@attrs.frozen
class RegisterPage:
    """One page of a pass: the items, and the cursor of the next page (None: the last)."""

    items: tuple[Any, ...]
    cursor: str | None


@runtime_checkable
class Register(Protocol):
    """**Protocol:** tier ``register``, on the unit of work (see the module docstring).

    ``register_apply`` writes in the unit of work's transaction, with the
    core tier's ``apply``: both commit or roll back together.
    """

    def register_fetch(self, request: RegisterFetch) -> RegisterFetched: ...

    def register_apply(self, changes: RegisterChanges) -> None: ...

    def register_page(self, establishment_uai: str, cursor: str | None,
                      limit: int) -> RegisterPage:
        """The establishment's records (items: :class:`RegisterRecord`)."""
        ...

    def linked_children_page(self, establishment_uai: str, cursor: str | None,
                             limit: int) -> RegisterPage:
        """The distinct ids (items: ``str``) of children that the establishment's
        letters gave to responsable accounts."""
        ...
