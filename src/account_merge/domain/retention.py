"""Retention: how long the library keeps what it stores, as a policy and pure rules.

A French school ENT keeps parents' and children's personal data for a
public service, only as long as the service needs it.  Each default of
:class:`RetentionPolicy` follows a rule:

- **never-activated accounts** are deleted 90 days after their letter was
  issued (Téléservices FAQ: « si votre compte n'a pas été activé ou
  confirmé depuis 90 jours [...] celui-ci sera supprimé »), never before
  the letter expires;
- **expired letters' hashes**: the argon2 hash of a provisional password
  is erased as soon as the letter expires (it opens nothing any more);
  the credential keeps its expiry date, which dates the letter;
- **unused accounts**, ACTIVE with no sign-in for 365 days (the same FAQ:
  « si vous ne vous êtes pas connecté depuis 365 jours »);
  ``Account.last_signed_in_at`` is set by every sign-in and by the
  activation.  An account activated before sign-ins were recorded (no
  time at all) is never deleted on that guess;
- **closed accounts** (an account the school's register left with no
  child) are deleted 90 days after they were closed: « dans un délai de
  trois mois dès lors que la personne concernée n'a plus vocation à
  détenir un compte » (arrêté du 30 novembre 2006 relatif aux ENT, art. 6);
- **absorbed accounts** (merge redirects), with the credential they keep
  to answer ``account_merged``, go with the account that absorbed them;
- **audit records** are kept 12 months, configurable from 6 months to 3
  years (CNIL, délibération n° 2021-122 du 14 octobre 2021: « entre six
  mois et un an », up to three years with documented analysis), then
  deleted or pseudonymised (:class:`AuditEnd`);
- **published outbox events** are deleted 30 days after they happened,
  and events nobody published after 365 days (configurable; None keeps
  them until published);
- **failure counters** at rest for 30 days are deleted: counters hold
  login keys and digests of clients, and an attacker must stay silent 30
  days to start counting again, which loosens no limit of
  :class:`~account_merge.domain.throttle.ThrottlePolicy` (the merge lock
  allows 10 failures per 24 hours at most).

What *deleting an account* means is :func:`forgotten`: the account and
everything that names it (credential, links, counters keyed by its login,
receipts, address index, events, audit records, which are pseudonymised:
:func:`pseudonymised`).

Nothing here touches a store; :mod:`account_merge.service.retention`
applies the rules in bounded batches.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import attrs

from account_merge.domain.account import Account, AccountStatus, Credential, CredentialKind
from account_merge.domain.audit import AuditRecord
from account_merge.domain.logins import login_key
from account_merge.domain.recovery import email_key
from account_merge.domain.throttle import (
    ThrottleKind,
    ThrottleState,
    merge_key,
    principal_key,
    recovery_key,
)
from account_merge.exceptions import InvalidInput

__all__ = [
    "DELETED_ACCOUNT",
    "ERASED_HASH",
    "MAX_AUDIT",
    "MAX_BATCH",
    "MIN_AUDIT",
    "PSEUDONYMISED",
    "AuditEnd",
    "Forgotten",
    "PurgePlan",
    "PurgeReason",
    "PurgeReport",
    "RetentionPolicy",
    "ascii_lower",
    "closed_cutoff",
    "counter_at_rest",
    "due_reason",
    "establishment_of_actor",
    "forgotten",
    "is_erased",
    "letter_issued_at",
    "names_someone",
    "plan_purge",
    "pseudonym",
    "pseudonymised",
    "unactivated_cutoff",
    "unused_cutoff",
]

#: The hash an expired letter's credential keeps: no verifier accepts it.
ERASED_HASH = "!erased"
#: Bounds of the audit's retention: 6 months to 3 years (CNIL délibération 2021-122).
MIN_AUDIT = timedelta(days=183)
MAX_AUDIT = timedelta(days=3 * 365 + 1)
#: Largest number of accounts (or rows) one batch of a purge handles.
MAX_BATCH = 10_000
#: The start of the ``detail`` of a pseudonymised audit record.
PSEUDONYMISED = "pseudonymised"

_ESTABLISHMENT_ACTOR = "establishment:"


class AuditEnd(enum.Enum):
    """What happens to an audit record at the end of its retention."""

    #: deleted (the default)
    DELETE = "delete"
    #: pseudonymised (:func:`pseudonymised`): the action, time, outcome and
    #: establishment stay, nothing that names a person
    PSEUDONYMISE = "pseudonymise"


class PurgeReason(enum.Enum):
    """Why an account is deleted."""

    UNACTIVATED = "unactivated"
    UNUSED = "unused"
    CLOSED = "closed"
    #: an absorbed account (a merge redirect) whose holder is deleted
    ABSORBED = "absorbed"


def _duration(minimum: timedelta | None = None, maximum: timedelta | None = None) -> Any:
    def check(_: Any, attribute: Any, value: Any) -> None:
        if not isinstance(value, timedelta) or value <= timedelta(0):
            raise InvalidInput(attribute.name, "must be a positive timedelta")
        if minimum is not None and value < minimum:
            raise InvalidInput(attribute.name, f"must be at least {minimum.days} days")
        if maximum is not None and value > maximum:
            raise InvalidInput(attribute.name, f"must be at most {maximum.days} days")
    return check


def _optional_duration(_: Any, attribute: Any, value: Any) -> None:
    if value is not None:
        _duration()(_, attribute, value)


def _audit_end(_: Any, attribute: Any, value: Any) -> None:
    if not isinstance(value, AuditEnd):
        raise InvalidInput(attribute.name, "must be an AuditEnd")


def _batch(_: Any, attribute: Any, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_BATCH:
        raise InvalidInput(attribute.name, f"must be an int from 1 to {MAX_BATCH}")


@attrs.frozen(kw_only=True)
class RetentionPolicy:
    """How long each kind of record is kept (see the module docstring for each rule).

    - ``unactivated``: a never-activated account, after its letter's issue
      (90 days; never before the letter expires);
    - ``unused``: an ACTIVE account, after its last sign-in (365 days);
    - ``closed``: an account the register closed, after its closure (90
      days, within the three months of the ENT order);
    - ``audit``: an audit record (365 days, from 183 days to 3 years), then
      ``audit_end`` (:attr:`AuditEnd.DELETE`, or ``PSEUDONYMISE``);
    - ``published_events``: an outbox event the host marked published, after
      it happened (30 days); ``unpublished_events``: one nobody published
      (365 days; None: kept until published);
    - ``counters``: a failure counter, after its last failure (30 days);
    - ``batch``: accounts (or rows) a purge handles per unit of work (500),
      so that no lock is held long.

    Expired letters' hashes are erased at expiry, and absorbed accounts go
    with their holder: these two follow from the rules, not from a delay.
    """

    unactivated: timedelta = attrs.field(default=timedelta(days=90), validator=_duration())
    unused: timedelta = attrs.field(default=timedelta(days=365), validator=_duration())
    closed: timedelta = attrs.field(default=timedelta(days=90), validator=_duration())
    audit: timedelta = attrs.field(default=timedelta(days=365),
                                   validator=_duration(MIN_AUDIT, MAX_AUDIT))
    audit_end: AuditEnd = attrs.field(default=AuditEnd.DELETE, validator=_audit_end)
    published_events: timedelta = attrs.field(default=timedelta(days=30), validator=_duration())
    unpublished_events: timedelta | None = attrs.field(default=timedelta(days=365),
                                                       validator=_optional_duration)
    counters: timedelta = attrs.field(default=timedelta(days=30), validator=_duration())
    batch: int = attrs.field(default=500, validator=_batch)


# -- when an account is due ----------------------------------------------------------------
def letter_issued_at(credential: Credential, provisional_validity: timedelta) -> datetime | None:
    """When the letter of a provisional credential was issued (its expiry less its validity)."""
    if credential.kind is not CredentialKind.PROVISIONAL or credential.expires_at is None:
        return None
    return credential.expires_at - provisional_validity


def unactivated_cutoff(policy: RetentionPolicy, provisional_validity: timedelta,
                       now: datetime) -> datetime:
    """The latest letter expiry of a never-activated account that is due at *now*.

    Due ``unactivated`` after the letter's issue and never before it
    expires: its expiry is at most ``now - unactivated + validity`` and at
    most ``now``.
    """
    return min(now, now - policy.unactivated + provisional_validity)


def unused_cutoff(policy: RetentionPolicy, now: datetime) -> datetime:
    """The latest last sign-in of an ACTIVE account that is due at *now*."""
    return now - policy.unused


def closed_cutoff(policy: RetentionPolicy, now: datetime) -> datetime:
    """The latest closure of a CLOSED account that is due at *now*."""
    return now - policy.closed


def due_reason(account: Account, credential: Credential | None, policy: RetentionPolicy, *,
               provisional_validity: timedelta, now: datetime,
               closed_at: datetime | None = None) -> PurgeReason | None:
    """Why *account* is due for deletion at *now*, or None if it is not.

    An absorbed (MERGED) account is never due on its own: it goes with its
    holder.  *closed_at* is when the register closed the account, if it did.
    """
    if account.status is AccountStatus.PROVISIONAL:
        if credential is None or credential.kind is not CredentialKind.PROVISIONAL \
                or credential.expires_at is None:
            return None
        if credential.expires_at <= unactivated_cutoff(policy, provisional_validity, now):
            return PurgeReason.UNACTIVATED
        return None
    if account.status is AccountStatus.ACTIVE:
        last = account.last_signed_in_at
        if last is not None and last <= unused_cutoff(policy, now):
            return PurgeReason.UNUSED
        return None
    if closed_at is not None and account.status is AccountStatus.CLOSED \
            and closed_at <= closed_cutoff(policy, now):
        return PurgeReason.CLOSED
    return None


def is_erased(credential: Credential) -> bool:
    """True for an expired letter's credential whose hash was erased."""
    return credential.password_hash == ERASED_HASH


# -- what deleting an account deletes ------------------------------------------------------
@attrs.frozen
class Forgotten:
    """Everything a store deletes with some accounts (see :func:`forgotten`).

    - ``account_ids``: the accounts (with their credentials, links, address
      index entries and the receipts of the merges they made as principal);
    - ``logins``: texts a person typed that name them (their logins and
      addresses), matched without regard to ASCII case in the ``login`` of
      audit records;
    - ``counter_keys`` and ``counter_prefixes``: the failure counters keyed
      by their logins and ids (exact keys, and key prefixes);
    - ``created``: ``(time, account id)`` of each account's creation: the
      audit records written at that time may name the account in their
      ``detail`` (a split names the accounts it made), and the name is
      replaced there by ``a deleted account``.

    The audit records whose ``account_id`` or ``actor`` is one of the ids,
    or whose ``login`` is one of the logins, are pseudonymised
    (:func:`pseudonymised`); events are the service's business.
    """

    account_ids: tuple[str, ...]
    logins: tuple[str, ...] = ()
    counter_keys: tuple[str, ...] = ()
    counter_prefixes: tuple[str, ...] = ()
    created: tuple[tuple[datetime, str], ...] = ()

    def __add__(self, other: Forgotten) -> Forgotten:
        return Forgotten(*(tuple(dict.fromkeys(getattr(self, f.name) + getattr(other, f.name)))
                           for f in attrs.fields(Forgotten)))

    def __bool__(self) -> bool:
        return bool(self.account_ids or self.logins or self.counter_keys
                    or self.counter_prefixes)

    def names_counter(self, key: str) -> bool:
        """True if the counter *key* is one of those forgotten."""
        return key in self.counter_keys or any(key.startswith(p) for p in self.counter_prefixes)

    def mentions(self, record: AuditRecord) -> str | None:
        """The id of an account *record* names in its detail, if it was written when that
        account was created (see ``created``); else None."""
        if record.detail is None:
            return None
        return next((account_id for at, account_id in self.created
                     if record.at == at and account_id in record.detail), None)

    def names_record(self, record: AuditRecord) -> bool:
        """True if *record* is pseudonymised when these accounts are deleted."""
        ids = set(self.account_ids)
        if record.account_id in ids or record.actor in ids:
            return True
        typed = ascii_lower(record.login) if record.login is not None else None
        return typed is not None and typed in {ascii_lower(t) for t in self.logins}


#: What replaces a deleted account's id in the detail of another account's record.
DELETED_ACCOUNT = "a deleted account"


def ascii_lower(text: str) -> str:
    """*text* with A-Z lowered, nothing else: the case every store folds alike."""
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def forgotten(accounts: Iterable[Account]) -> Forgotten:
    """What deleting *accounts* deletes (see :class:`Forgotten`).

    For each account: its id; its login and its address (as typed in the
    way back's forms, they are the ``login`` of audit records); the
    counters of its login (sign-in from every client, the merge form, the
    recovery requests for its login and its address) and of its id (the
    merge form's, as principal).
    """
    ids: list[str] = []
    logins: list[str] = []
    keys: list[str] = []
    prefixes: list[str] = []
    created: list[tuple[datetime, str]] = []
    for account in accounts:
        key = login_key(account.login)
        ids.append(account.id)
        logins.append(account.login)
        keys += [merge_key(key), principal_key(account.id), recovery_key(email_key(account.login))]
        prefixes.append(f"{ThrottleKind.SIGN_IN.value}:{key}:")
        if account.email is not None:
            logins.append(account.email)
            keys.append(recovery_key(email_key(account.email)))
        created.append((account.created_at, account.id))
    return Forgotten(account_ids=tuple(ids), logins=tuple(dict.fromkeys(logins)),
                     counter_keys=tuple(dict.fromkeys(keys)), counter_prefixes=tuple(prefixes),
                     created=tuple(created))


def establishment_of_actor(actor: str | None) -> str | None:
    """The UAI of an establishment actor (``establishment:<UAI>``), else None."""
    if actor is not None and actor.startswith(_ESTABLISHMENT_ACTOR):
        return actor[len(_ESTABLISHMENT_ACTOR):]
    return None


def pseudonymised(record: AuditRecord, establishment_uai: str | None) -> AuditRecord:
    """*record* without anything that names a person: the reference of what a store writes.

    The time, the action and the outcome stay; an establishment actor
    stays; the account, the login typed and the detail go, and the detail
    says ``pseudonymised``, followed by ``; establishment <UAI>`` when one
    is known: the actor's, else *establishment_uai* (the establishment of
    the account the record was about, as the store found it).
    """
    uai = establishment_of_actor(record.actor) or establishment_uai
    return AuditRecord(at=record.at, action=record.action, outcome=record.outcome,
                       actor=record.actor if establishment_of_actor(record.actor) else None,
                       detail=PSEUDONYMISED if uai is None
                       else f"{PSEUDONYMISED}; establishment {uai}")


def names_someone(record: AuditRecord) -> bool:
    """True unless *record* is anonymous: pseudonymised, or naming no person at all."""
    return (record.account_id is not None or record.login is not None
            or (record.actor is not None and establishment_of_actor(record.actor) is None)
            or (record.detail is not None and not record.detail.startswith(PSEUDONYMISED)))


def pseudonym(account_id: str) -> str:
    """The name an :class:`~account_merge.domain.events.AccountPurged` event gives an account.

    A digest of the id: it names no one to a reader of the store, and a
    host that keeps data of its own about accounts finds which by computing
    the pseudonym of the ids it holds.
    """
    digest = hashlib.blake2b(account_id.encode("ascii", "replace"), digest_size=16,
                             person=b"account_merge")
    return digest.hexdigest()


# -- the plan of one batch -----------------------------------------------------------------
@attrs.frozen
class PurgePlan:
    """What one batch deletes: accounts with their reasons, and those it keeps."""

    deleted: tuple[tuple[Account, PurgeReason], ...]
    #: due accounts kept: they hold the only link of an enrolled child
    kept: tuple[Account, ...] = ()

    @property
    def accounts(self) -> tuple[Account, ...]:
        return tuple(account for account, _ in self.deleted)


def plan_purge(
    due: Sequence[tuple[Account, PurgeReason]],
    absorbed: Mapping[str, Sequence[Account]],
    children: Mapping[str, Sequence[str]],
    *,
    enrolled: Iterable[str] | Mapping[str, Iterable[str]] = (),
    holders: Mapping[str, Iterable[str]] | None = None,
) -> PurgePlan:
    """The accounts of one batch to delete, in order, with the accounts they absorbed.

    *due* are the accounts due, with why; *absorbed* the accounts each had
    absorbed (merge redirects, deleted with it); *children* the child ids
    each holds.  An account that holds the only link of an *enrolled*
    child (one the school's register lists) is kept: removing a child the
    register lists is the register's job, never the purge's.  *enrolled*
    is a set of child ids, or, by account id, the children the register
    entries of that account's letters (its own, those it absorbed) list
    (the service's: an entry goes with its account, so a child only the
    entries of accounts deleted earlier listed is listed no more).
    *holders* gives, for such children, every account holding a link to
    them; an account deleted earlier in the batch holds nothing any more.
    """
    per_account = enrolled if isinstance(enrolled, Mapping) else None
    everywhere = set() if per_account is not None else set(enrolled)
    holding = {child: set(ids) for child, ids in (holders or {}).items()}
    deleted: list[tuple[Account, PurgeReason]] = []
    kept: list[Account] = []
    for account, reason in due:
        wanted = set(per_account.get(account.id, ())) if per_account is not None else everywhere
        stranded = [c for c in children.get(account.id, ())
                    if c in wanted and not (holding.get(c, set()) - {account.id})]
        if stranded:
            kept.append(account)
            continue
        for child in children.get(account.id, ()):
            holding.get(child, set()).discard(account.id)
        deleted.append((account, reason))
        deleted.extend((a, PurgeReason.ABSORBED) for a in absorbed.get(account.id, ()))
    return PurgePlan(deleted=tuple(deleted), kept=tuple(kept))


# -- the report ----------------------------------------------------------------------------
@attrs.frozen(kw_only=True)
class PurgeReport:
    """What one purge deleted (or, in a dry run, would delete), by kind.

    ``deleted`` counts accounts by :class:`PurgeReason` value
    (``unactivated``, ``unused``, ``closed``, ``absorbed``);
    ``kept_for_children`` the due accounts kept because they hold an
    enrolled child's only link; ``account_ids`` are the accounts deleted,
    for the host's own data about them (never stored by the library).
    """

    at: datetime
    dry_run: bool = False
    deleted: Mapping[str, int] = attrs.field(factory=dict)
    kept_for_children: int = 0
    erased_hashes: int = 0
    audit_deleted: int = 0
    audit_pseudonymised: int = 0
    events_deleted: int = 0
    counters_deleted: int = 0
    account_ids: tuple[str, ...] = ()

    @property
    def accounts(self) -> int:
        """How many accounts were deleted (or would be), absorbed ones included."""
        return sum(self.deleted.values())

    @property
    def handled(self) -> int:
        """Every row deleted, erased or pseudonymised: what a purge's progress counts."""
        return (self.accounts + self.erased_hashes + self.audit_deleted
                + self.audit_pseudonymised + self.events_deleted + self.counters_deleted)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values (without the ids)."""
        return {"at": self.at.isoformat(), "dry_run": self.dry_run, "accounts": self.accounts,
                "deleted": {reason.value: self.deleted.get(reason.value, 0)
                            for reason in PurgeReason},
                "kept_for_children": self.kept_for_children,
                "erased_hashes": self.erased_hashes, "audit_deleted": self.audit_deleted,
                "audit_pseudonymised": self.audit_pseudonymised,
                "events_deleted": self.events_deleted,
                "counters_deleted": self.counters_deleted}


def counter_at_rest(state: ThrottleState, before: datetime) -> bool:
    """True if the counter's last failure is before *before* (or it never failed)."""
    return state.last_failure_at is None or state.last_failure_at < before
