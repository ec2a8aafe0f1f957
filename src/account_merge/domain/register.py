"""The school's register: responsables known by the school's own id, and what a sync changes.

An establishment keeps its register in SIECLE (collèges, lycées) or ONDE
(écoles) and exports it: one :class:`RegisterEntry` per responsable, with
the school's id for that person (SIECLE's ``PERSONNE_ID``), a name, an
e-mail perhaps, and the children it lists for them.  The store keeps, for
each entry a sync has seen, a :class:`RegisterRecord`: the account issued
from that entry and the entry as last synced.

The rules of a sync, as pure functions over what the store holds:

- a responsable the register lists for the first time gets a letter
  (unless :func:`choose_adoption` finds the one letter the school gave
  them before it kept its register here); a known one never gets a
  second letter: their login and password stay;
- :func:`plan_holder` decides, for one live account, the links of the
  synced establishment's letters it must hold: every child that a letter
  it holds (its own, or one merged into it) lists now; a child no letter
  it holds lists any more is detached; the account keeps the children of
  other establishments' letters;
- an account left with no child is closed (no sign-in, no merge); it is
  opened again, as it was, if the register lists a child for it again.

Because an account keeps a child as long as *any* letter it holds lists
that child, a child is never left without a live account by the detaching
of another letter's link: the responsable of a letter merged into a
principal keeps the children that letter lists, on the principal, without
a new letter.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import attrs

from account_merge.domain.account import (
    Account,
    AccountStatus,
    CredentialKind,
    Role,
    validate_email,
)
from account_merge.domain.child import Child, ChildLink
from account_merge.domain.letter import NotificationLetter
from account_merge.domain.validation import check_identifier, check_text
from account_merge.exceptions import InvalidInput

__all__ = [
    "AccountChange",
    "ChildChange",
    "HolderPlan",
    "Listing",
    "NameChange",
    "RegisterEntry",
    "RegisterLetter",
    "RegisterProblem",
    "RegisterRecord",
    "SyncMode",
    "SyncReport",
    "choose_adoption",
    "keep_listed",
    "name_key",
    "plan_holder",
    "reopened_status",
]


def _children(value: object) -> tuple[Child, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise InvalidInput("children", "must be a sequence of Child")
    kids = tuple(value)
    if not all(isinstance(c, Child) for c in kids):
        raise InvalidInput("children", "must be a sequence of Child")
    return kids


def _listed_children(_: object, __: object, value: tuple[Child, ...]) -> None:
    if not value:
        raise InvalidInput("children", "a responsable of the register lists at least one child")
    if len({c.id for c in value}) != len(value):
        raise InvalidInput("children", "the same child is listed twice")


def _blank_is_none(value: object) -> object:
    if isinstance(value, str) and not value.strip():
        return None
    return value.strip() if isinstance(value, str) else value


def _email(_: object, __: object, value: str | None) -> None:
    if value is not None:
        validate_email(value)


def _line(_: object, __: object, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InvalidInput("line", "must be a positive int or None")


def _sorted(children: Iterable[Child]) -> tuple[Child, ...]:
    return tuple(sorted(children, key=lambda c: c.id))


@attrs.frozen
class RegisterEntry:
    """One responsable as the school's register lists them.

    ``external_id`` is the school's id for the person (SIECLE's
    ``PERSONNE_ID``, AAF's ``ENTPersonIdentifiant``, a CSV's
    ``responsable_id``): printable ASCII, stable from one export to the
    next.  Several entries with the same ``external_id`` in one register
    are one responsable (a CSV has a row per child): their children are
    gathered, and their names (and e-mails) must agree.  ``line`` is where
    the entry was read (the readers set it), so that a problem names it.
    """

    external_id: str = attrs.field(validator=lambda _, __, v: check_identifier("external_id", v))
    display_name: str = attrs.field(validator=lambda _, __, v: check_text("display_name", v))
    children: tuple[Child, ...] = attrs.field(converter=_children, validator=_listed_children)
    email: str | None = attrs.field(default=None, converter=_blank_is_none, validator=_email)
    line: int | None = attrs.field(default=None, kw_only=True, eq=False, validator=_line)


@attrs.frozen
class Listing:
    """What the register says of a responsable: compared to tell an entry unchanged.

    ``children`` are sorted by id; empty when the last full register did
    not list the responsable.
    """

    display_name: str
    email: str | None
    children: tuple[Child, ...] = attrs.field(converter=_sorted)


@attrs.frozen
class RegisterRecord:
    """A register entry as the store keeps it: the account issued from it, and the entry.

    ``children`` is what the last sync listed for the responsable (sorted
    by id), empty once a full register no longer lists them: the record
    stays, so that a responsable who comes back finds their account.
    """

    establishment_uai: str
    external_id: str
    account_id: str
    display_name: str
    email: str | None
    children: tuple[Child, ...] = attrs.field(converter=_sorted)

    @property
    def key(self) -> tuple[str, str]:
        """``(establishment_uai, external_id)``, under which the store keeps it."""
        return self.establishment_uai, self.external_id

    @property
    def listing(self) -> Listing:
        """What the register said, as last synced."""
        return Listing(self.display_name, self.email, self.children)

    def with_listing(self, listing: Listing) -> RegisterRecord:
        """This record saying what *listing* says."""
        return attrs.evolve(self, display_name=listing.display_name, email=listing.email,
                            children=listing.children)


@attrs.frozen
class RegisterProblem:
    """One thing wrong with a register, found before anything was written.

    ``line`` is the line of the file (or None where the source has no
    lines, as in an XML file: then ``external_id`` names the person);
    ``kind`` is stable (``wrong_establishment``, ``other_name``,
    ``other_email``, ``child_differs``, ``unknown_column``,
    ``missing_column``, ``bad_value``, ``unreadable``), ``message`` an
    English text, ``fields`` what a translated message needs.
    """

    line: int | None
    external_id: str | None
    kind: str
    message: str
    fields: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line is not None else "entry"
        who = f" ({self.external_id})" if self.external_id else ""
        return f"{where}{who}: {self.message}"


class SyncMode(enum.Enum):
    """A whole register (``full``: whoever it leaves out has left) or a delta (``partial``)."""

    FULL = "full"
    PARTIAL = "partial"


@attrs.frozen
class RegisterLetter:
    """A responsable new to the register, and their letter.

    ``letter`` is None in a dry run (nothing was issued) and carries the
    provisional password once issued (it is shown this once).
    """

    external_id: str
    display_name: str
    children: tuple[Child, ...]
    letter: NotificationLetter | None = None


@attrs.frozen
class ChildChange:
    """A child attached to (or detached from) a live account by a sync.

    ``external_id`` names the register entry whose letter gave the link,
    when the register knows it.
    """

    account_id: str
    child: Child
    external_id: str | None = None


@attrs.frozen
class AccountChange:
    """An account closed (left with no child) or opened again by a sync."""

    account_id: str
    display_name: str


@attrs.frozen
class NameChange:
    """A name the register corrected: a responsable's (``child_id`` None) or a child's."""

    account_id: str
    old: str
    new: str
    external_id: str | None = None
    child_id: str | None = None


@attrs.frozen
class SyncReport:
    """What a register sync did, or, in a dry run, would do.

    ``issued``: responsables new to the register and their letters;
    ``attached`` / ``detached``: children that joined or left live
    accounts; ``closed`` / ``reopened``: accounts left with no child, and
    closed ones that have a child again; ``renamed``: names the register
    corrected; ``adopted``: letters the school had issued before keeping
    its register here, now known by the responsable's id (no new letter);
    ``unchanged``: how many entries were already as the store had them;
    ``entries``: how many responsables the register lists.  Attached and
    detached children are listed by external id, then child id, closed
    and reopened accounts by name, adopted letters by external id: the
    same on every store.
    """

    establishment_uai: str
    mode: SyncMode
    dry_run: bool
    entries: int = 0
    unchanged: int = 0
    issued: tuple[RegisterLetter, ...] = ()
    attached: tuple[ChildChange, ...] = ()
    detached: tuple[ChildChange, ...] = ()
    closed: tuple[AccountChange, ...] = ()
    reopened: tuple[AccountChange, ...] = ()
    renamed: tuple[NameChange, ...] = ()
    adopted: tuple[tuple[str, str], ...] = ()

    @property
    def letters(self) -> tuple[NotificationLetter, ...]:
        """The letters issued (none in a dry run)."""
        return tuple(i.letter for i in self.issued if i.letter is not None)

    @property
    def changed(self) -> bool:
        """True if the sync changed (or would change) anything."""
        return any(self.counts()[name] for name in self.CHANGES)

    #: The parts of a report that are changes, in the order a preview shows them.
    CHANGES = ("issued", "attached", "detached", "closed", "reopened", "renamed", "adopted")

    def counts(self) -> dict[str, int]:
        """How many of each: every part of :data:`CHANGES`, and ``unchanged``."""
        out = {name: len(getattr(self, name)) for name in self.CHANGES}
        out["unchanged"] = self.unchanged
        return out


_NOT_WORD = re.compile(r"[\W_]+")


def name_key(name: str) -> str:
    """A name as compared across sources: without accents, case, or punctuation.

    >>> name_key("  Hélène   LE-GALL ") == name_key("helene le gall")
    True
    """
    decomposed = unicodedata.normalize("NFKD", name)
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _NOT_WORD.sub(" ", plain.casefold()).strip()


def reopened_status(kind: CredentialKind | None) -> AccountStatus:
    """The status a closed account opens again in: as its credential says it was."""
    return AccountStatus.PROVISIONAL if kind is CredentialKind.PROVISIONAL else AccountStatus.ACTIVE


def choose_adoption(display_name: str, candidates: Iterable[Account]) -> Account | None:
    """The one letter the school gave this responsable before it kept its register here.

    *candidates* are the accounts whose letters (issued by the same
    establishment, known to no register entry) carry one of the entry's
    children.  As entcore's feeder does with names, an account is adopted
    only when exactly one of them bears the entry's name (:func:`name_key`);
    otherwise None, and the responsable gets a letter of their own.
    """
    wanted = name_key(display_name)
    found = {a.id: a for a in candidates
             if a.role is Role.RESPONSABLE and name_key(a.display_name) == wanted}
    return next(iter(found.values())) if len(found) == 1 else None


@attrs.frozen
class HolderPlan:
    """What a sync writes for one account (see :func:`plan_holder`)."""

    holder: Account
    account: Account | None = None
    unlink: tuple[ChildLink, ...] = ()
    link: tuple[ChildLink, ...] = ()
    attached: tuple[ChildLink, ...] = ()
    renamed: tuple[tuple[ChildLink, Child], ...] = ()

    @property
    def detached(self) -> tuple[ChildLink, ...]:
        """The links removed."""
        return self.unlink

    @property
    def closed(self) -> bool:
        """True if the account is closed by this plan."""
        return self.account is not None and self.account.status is AccountStatus.CLOSED

    @property
    def reopened(self) -> bool:
        """True if the closed account opens again by this plan."""
        return self.account is not None and self.account.status is not AccountStatus.CLOSED

    @property
    def changed(self) -> bool:
        """True if there is anything to write."""
        return bool(self.account is not None or self.unlink or self.link)


def _preference(holder_id: str, establishment_uai: str) -> Callable[[RegisterRecord], Any]:
    # The account's own letter first, then the synced establishment's, then the rest.
    return lambda r: (r.account_id != holder_id, r.establishment_uai != establishment_uai)


def plan_holder(
    holder: Account,
    credential_kind: CredentialKind | None,
    links: Sequence[ChildLink],
    held: Sequence[RegisterRecord],
    establishment_uai: str,
    enrolled: Callable[[str], bool] | None,
    now: datetime,
) -> HolderPlan:
    """The links of *establishment_uai*'s letters a live or closed account must hold.

    *links* are the account's links; *held* the register records of the
    letters it holds (its own, and those merged into it), of every
    establishment, each listing the children that count now (for the
    synced establishment, what its register says today).  *enrolled*
    tells, for a whole register, whether anyone in it lists a child (None
    for a partial one).

    - A link of the establishment's letters stays while a held letter
      lists its child (renamed if the register corrected the child's
      name, or credited to that letter if its own letter no longer lists
      the child); otherwise it is detached, if its letter is one the
      register knows, or, for a letter the register never knew, if a
      whole register lists the child nowhere (the child left).
    - Every child a held letter of the establishment lists and the account
      lacks is attached, credited to that letter (through a merge if the
      letter was merged into the account).
    - Links of other establishments' letters are theirs: untouched.
    - Left with no child, the account is closed; closed with a child
      again, it opens again as it was (:func:`reopened_status`).
    """
    if holder.status is AccountStatus.MERGED:
        raise InvalidInput("holder", "an absorbed account holds no children")
    order = sorted(held, key=_preference(holder.id, establishment_uai))
    covers: dict[str, list[tuple[RegisterRecord, Child]]] = {}
    for record in order:
        for child in record.children:
            covers.setdefault(child.id, []).append((record, child))
    known = {r.account_id for r in held if r.establishment_uai == establishment_uai}
    unlink: list[ChildLink] = []
    link: list[ChildLink] = []
    renamed: list[tuple[ChildLink, Child]] = []
    for current in links:
        if current.origin_establishment_uai != establishment_uai:
            continue
        candidates = covers.get(current.child.id)
        if candidates:
            same = next(((r, c) for r, c in candidates
                         if r.account_id == current.origin_account_id
                         and r.establishment_uai == current.origin_establishment_uai), None)
            if same is not None:
                if same[1] != current.child:
                    link.append(attrs.evolve(current, child=same[1]))
                    renamed.append((current, same[1]))
                continue
            record, child = candidates[0]
            link.append(ChildLink(account_id=holder.id, child=child,
                                  origin_account_id=record.account_id,
                                  origin_establishment_uai=record.establishment_uai,
                                  via_merge=record.account_id != holder.id,
                                  linked_at=current.linked_at))
        elif current.origin_account_id in known or (
                enrolled is not None and not enrolled(current.child.id)):
            unlink.append(current)
    holding = {lk.child.id for lk in links} - {lk.child.id for lk in unlink}
    attached: list[ChildLink] = []
    for record in order:
        if record.establishment_uai != establishment_uai:
            continue
        for child in record.children:
            if child.id in holding:
                continue
            new = ChildLink(account_id=holder.id, child=child, origin_account_id=record.account_id,
                            origin_establishment_uai=establishment_uai,
                            via_merge=record.account_id != holder.id, linked_at=now)
            link.append(new)
            attached.append(new)
            holding.add(child.id)
    account = None
    if not holding and holder.is_live:
        account = attrs.evolve(holder, status=AccountStatus.CLOSED)
    elif holding and holder.status is AccountStatus.CLOSED:
        account = attrs.evolve(holder, status=reopened_status(credential_kind))
    return HolderPlan(holder=holder, account=account, unlink=tuple(unlink), link=tuple(link),
                      attached=tuple(attached), renamed=tuple(renamed))


def keep_listed(holder_id: str, leaving: Sequence[ChildLink],
                held: Sequence[RegisterRecord]) -> tuple[ChildLink, ...]:
    """Of the links a split takes from an account, those another letter it holds keeps.

    A split gives the children of a merged letter to a new account for
    that letter's responsable.  A child that another letter the account
    holds (its own, or one merged into it) lists in the register, as the
    records *held* say, stays on the account too, credited to that letter
    (the account's own first, as :func:`plan_holder` chooses): both
    responsables keep it.  Returns the links that replace those of
    *leaving* that stay.
    """
    kept: list[ChildLink] = []
    for link in leaving:
        candidates = sorted(
            (r for r in held if r.account_id != link.origin_account_id
             and any(c.id == link.child.id for c in r.children)),
            key=lambda r: (r.account_id != holder_id,
                           r.establishment_uai != link.origin_establishment_uai))
        if not candidates:
            continue
        record = candidates[0]
        child = next(c for c in record.children if c.id == link.child.id)
        kept.append(ChildLink(account_id=holder_id, child=child,
                              origin_account_id=record.account_id,
                              origin_establishment_uai=record.establishment_uai,
                              via_merge=record.account_id != holder_id,
                              linked_at=link.linked_at))
    return tuple(kept)
