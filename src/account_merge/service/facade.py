"""MergeService: the one public entry, a thin facade over the use-case modules.

Each method is something a parent or an establishment does, and hands it
to the module of that actor's goal:

- :mod:`~account_merge.service.establishments`: an operator records the
  schools the store serves;
- :mod:`~account_merge.service.issuing`: an establishment issues accounts
  and letters;
- :mod:`~account_merge.service.own_account`: a parent activates, signs in,
  changes the password or the e-mail;
- :mod:`~account_merge.service.merging`: a parent merges an account into
  the principal;
- :mod:`~account_merge.service.splitting`: an establishment undoes merges;
- :mod:`~account_merge.service.reading`: screens and staff look things up;
- the way back: :mod:`~account_merge.service.recovery` (a parent forgot a
  password or a login), :mod:`~account_merge.service.email_address` (an
  address is confirmed before it is on record),
  :mod:`~account_merge.service.letters` (an establishment re-issues a
  lost letter), :mod:`~account_merge.service.notices` (the host sends
  what parents should hear about);
- :mod:`~account_merge.service.register`: an establishment syncs the
  accounts with its register;
- :mod:`~account_merge.service.retention`: the host deletes what the
  retention policy says, and gives a parent their own data.

The expensive step, the argon2 hash, always runs outside any transaction
(see :mod:`~account_merge.service.credential_check`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any

import attrs

from account_merge.domain.account import Account, Role
from account_merge.domain.audit import AuditRecord
from account_merge.domain.child import AttachedChild, Child
from account_merge.domain.establishment import Establishment
from account_merge.domain.events import OutboxEntry
from account_merge.domain.letter import NotificationLetter
from account_merge.domain.passwords import PasswordPolicy
from account_merge.domain.receipts import MergeReceipt, SplitReceipt
from account_merge.domain.register import RegisterEntry, RegisterLetter, SyncReport
from account_merge.domain.retention import PurgeReport, RetentionPolicy
from account_merge.domain.secret import Secret
from account_merge.domain.throttle import ThrottlePolicy
from account_merge.exceptions import InvalidInput
from account_merge.ports.clock import Clock
from account_merge.ports.mailer import Mailer
from account_merge.ports.storage import Storage
from account_merge.ports.verifier import CredentialVerifier
from account_merge.service import (
    email_address,
    establishments,
    issuing,
    letters,
    merging,
    notices,
    own_account,
    reading,
    recovery,
    register,
    retention,
    splitting,
)
from account_merge.service.bootstrap import build_context
from account_merge.service.links import RecoveryOptions
from account_merge.service.policies import IdentityRule, Policies

__all__ = ["MergeService"]


class MergeService:
    """The regroupement de comptes responsables, over a storage of your choice.

    *storage* conforms to :class:`~account_merge.ports.Storage`; *verifier*
    defaults to :class:`~account_merge.credentials.Argon2Verifier` with
    argon2-cffi's defaults; *clock* is a zero-argument callable giving an
    aware datetime (UTC now by default).  *policies* holds every tunable
    (:class:`~account_merge.service.policies.Policies`); the keyword
    arguments after it change one policy each, for convenience.

    *secret_key* (at least 16 characters, kept secret) signs the links of
    notices, and *links* maps ``"password_reset"`` and
    ``"email_verification"`` to the URL templates of the host's pages,
    with ``{token}`` where the token goes (and ``"sign_in"``, optional, to
    the sign-in page): see ``docs/recovery.md``.

    *retention* (``policies.retention``) says how long each kind of record
    is kept: see :meth:`purge` and ``docs/privacy.md``.
    """

    def __init__(
        self,
        storage: Storage,
        verifier: CredentialVerifier | None = None,
        clock: Clock | None = None,
        *,
        policies: Policies | None = None,
        password_policy: PasswordPolicy | None = None,
        throttle: ThrottlePolicy | None = None,
        identity_rule: IdentityRule | None = None,
        provisional_validity: timedelta | None = None,
        provisional_length: int | None = None,
        secret_key: str | bytes | Secret | None = None,
        links: Mapping[str, str] | None = None,
        retention: RetentionPolicy | None = None,
    ) -> None:
        changes: dict[str, Any] = {name: value for name, value in (
            ("password_policy", password_policy), ("throttle", throttle),
            ("identity_rule", identity_rule), ("provisional_validity", provisional_validity),
            ("provisional_length", provisional_length), ("retention", retention))
            if value is not None}
        base = policies if policies is not None else Policies()
        if not isinstance(base, Policies):
            raise InvalidInput("policies", "must be a Policies")
        self._ctx = build_context(storage, verifier, clock, attrs.evolve(base, **changes),
                                  recovery=RecoveryOptions.of(secret_key, links))

    @property
    def storage(self) -> Storage:
        """The store."""
        return self._ctx.storage

    @property
    def verifier(self) -> CredentialVerifier:
        """The password verifier."""
        return self._ctx.verifier

    @property
    def clock(self) -> Clock:
        """The clock."""
        return self._ctx.clock

    @property
    def policies(self) -> Policies:
        """Every tunable of this service."""
        return self._ctx.policies

    @property
    def throttle(self) -> ThrottlePolicy:
        """The limits on failed attempts (``policies.throttle``)."""
        return self._ctx.policies.throttle

    def __repr__(self) -> str:
        return f"MergeService(storage={self.storage!r}, verifier={self.verifier!r})"

    # -- an establishment ---------------------------------------------------------
    def register_establishment(self, establishment: Establishment, *,
                               actor: str | None = None) -> Establishment:
        """Record an establishment the store serves (or its new name), audited.

        *actor* names who did it in the audit trail (an operator's name,
        ``"cli"``...).
        """
        return establishments.register_establishment(self._ctx, establishment, actor)

    def find_establishment(self, uai: str) -> Establishment | None:
        """The establishment the store knows under *uai*, or None."""
        return establishments.find_establishment(self._ctx, uai)

    def issue_account(self, establishment: Establishment, display_name: str,
                      children: Iterable[Child] = (), role: Role = Role.RESPONSABLE, *,
                      email: str | None = None) -> NotificationLetter:
        """Create a PROVISIONAL account for *display_name* and return its letter.

        A responsable account lists at least one child, a pupil's account
        exactly one (the pupil); every child is enrolled in *establishment*.
        The provisional password is printed on the letter only; the store
        keeps its argon2 hash, valid for ``provisional_validity``.  *email*,
        the address the establishment has for the responsable, is sent a
        confirmation link when the account is activated: it is on record
        only once confirmed (``docs/recovery.md``).
        """
        return issuing.issue_account(self._ctx, establishment, display_name, children, role,
                                     email)

    def issue_accounts(self, establishment: Establishment,
                       families: Iterable[tuple[str, Iterable[Child]]],
                       role: Role = Role.RESPONSABLE, *, workers: int | None = None,
                       progress: Callable[[int], None] | None = None,
                       ) -> Iterator[NotificationLetter]:
        """Issue one account per ``(display_name, children)`` family, hashing on every core.

        The argon2 hashes are computed by *workers* processes (default: one
        per CPU; 1 hashes here); each account is stored in a unit of work
        of its own.  Letters come in the order of *families*, each as soon
        as it is stored, so *families* may be a long generator; an invalid
        family raises ``invalid_input`` after those before it were issued.
        *progress* is called with the count of letters issued so far.
        """
        return issuing.issue_accounts(self._ctx, establishment, families, role,
                                      workers=workers, progress=progress)

    def split(self, establishment: Establishment, account_id: str) -> SplitReceipt:
        """Undo merges, for the letters *establishment* issued (rules S1-S3).

        The children whose merged letter the establishment issued move to
        new PROVISIONAL accounts, one per letter they first came with, each
        with a new letter (``receipt.letters``); the account keeps the rest.
        If *account_id* was itself absorbed, the split applies to the live
        account holding it.
        """
        return splitting.split(self._ctx, establishment, account_id)

    def sync_register(self, establishment: Establishment, entries: Iterable[RegisterEntry], *,
                      dry_run: bool = False, partial: bool = False,
                      workers: int | None = None,
                      progress: Callable[[str, int, int | None], None] | None = None,
                      on_letter: Callable[[RegisterLetter], None] | None = None,
                      ) -> SyncReport:
        """Bring the establishment's accounts in line with its register (SIECLE, ONDE, a CSV).

        *entries* is the whole register by default: a responsable it lists
        for the first time gets a letter (hashed on *workers* processes), a
        known one keeps their account, login and password; newly listed
        children join the live account holding their responsable's letter;
        children it no longer lists leave; an account left with no child
        is closed.  With ``partial=True`` *entries* is a delta: only the
        responsables it lists change, nobody leaves.  A register that does
        not hold together is refused whole (``invalid_input``, an
        :class:`~account_merge.exceptions.InvalidRegister` naming every bad
        line) before anything is written.  ``dry_run=True`` writes nothing,
        hashes nothing, and returns the same report.  *progress* is told
        ``(stage, done, total)``; *on_letter* gets each letter as soon as it
        is stored.  The store needs the ``register`` tier (``not_supported``
        otherwise).  See ``docs/register.md``.
        """
        return register.sync_register(self._ctx, establishment, entries, dry_run=dry_run,
                                      partial=partial, workers=workers, progress=progress,
                                      on_letter=on_letter)

    # -- a parent's own account ---------------------------------------------------
    def activate(self, login: str, provisional_password: str | Secret,
                 new_password: str | Secret, email: str | None = None, *,
                 client: str | None = None) -> Account:
        """First sign-in: replace the letter's provisional password by the parent's own.

        Any problem with the login or the provisional password is
        ``invalid_credentials``; a new password the policy refuses is
        ``password_policy``.  *client* (an IP address or device id the host
        vouches for) keeps one client's failures from slowing another's.
        *email* is sent a confirmation link (it needs ``secret_key`` and
        ``links``): it is on record once the link is followed, and the
        account comes back without it until then.
        """
        return own_account.activate(self._ctx, login, provisional_password, new_password,
                                    email, client)

    def authenticate(self, login: str, password: str | Secret, *,
                     client: str | None = None) -> Account:
        """Sign in to an ACTIVE account.

        Wrong or unknown credentials are ``invalid_credentials``; once the
        password is proven, a letter's provisional password is
        ``activation_required`` and an absorbed account's last password
        ``account_merged``.  Failures are throttled per login and *client*.
        """
        return own_account.authenticate(self._ctx, login, password, client)

    def change_password(self, account_id: str, current_password: str | Secret,
                        new_password: str | Secret, *, client: str | None = None) -> None:
        """Change an ACTIVE account's password, proven by the current one."""
        own_account.change_password(self._ctx, account_id, current_password, new_password,
                                    client)

    def change_email(self, account_id: str, email: str) -> Account:
        """Ask to confirm *email* for an ACTIVE account, without its password.

        .. deprecated:: use :meth:`request_email_change`, which asks for
           the current password.  The address is on record only once the
           link sent to it is followed (:meth:`confirm_email`): the account
           comes back unchanged.
        """
        warnings.warn("change_email() takes no password and changes nothing until the "
                      "address is confirmed: use request_email_change()",
                      DeprecationWarning, stacklevel=2)
        return email_address.change_email(self._ctx, account_id, email)

    # -- the way back --------------------------------------------------------------
    def request_password_reset(self, login_or_email: str, *,
                               client: str | None = None) -> None:
        """« Mot de passe oublié ? »: record a reset request; None, always.

        Whatever the login or address matched (an ACTIVE account with a
        confirmed address, another account, nothing), the same storage
        work is done and nothing is said; ``deliver_notices`` later sends
        the link to the address on record.  Requests are limited per
        login or address and per *client* (over the limit they are
        recorded and dropped).  Needs ``secret_key`` and a
        ``"password_reset"`` link (``invalid_input`` otherwise) and the
        ``email_index`` storage tier.
        """
        recovery.request_password_reset(self._ctx, login_or_email, client)

    def reset_password(self, token: str, new_password: str | Secret, *,
                       client: str | None = None) -> Account:
        """Set a new password with the token of a reset link; the account.

        Any problem with the token (unknown, expired, used, forged,
        truncated, or the password changed since) is ``invalid_token``.
        The parent is **not** signed in: send them to the sign-in page.
        Failures are slowed down per *client*.
        """
        return recovery.reset_password(self._ctx, token, new_password, client)

    def request_login_reminder(self, email: str, *, client: str | None = None) -> None:
        """« Identifiant oublié ? »: the logins of the address's live accounts; None, always.

        The same storage work and answer whatever the address matched;
        ``deliver_notices`` later sends one message per confirmed address.
        """
        recovery.request_login_reminder(self._ctx, email, client)

    def request_email_change(self, account_id: str, current_password: str | Secret,
                             new_email: str, *, client: str | None = None) -> None:
        """Ask to confirm *new_email* for an ACTIVE account, proven by its current password.

        The address is on record only once the link sent to it is
        followed (:meth:`confirm_email`); the old address is then told.
        """
        email_address.request_email_change(self._ctx, account_id, current_password,
                                           new_email, client)

    def confirm_email(self, token: str) -> Account:
        """Put the address of a confirmation link on record; the account.

        Any problem with the token is ``invalid_token``.
        """
        return email_address.confirm_email(self._ctx, token)

    def reissue_letter(self, establishment: Establishment,
                       account_id: str) -> NotificationLetter:
        """A new letter for a lost one, with the same login (an establishment's act).

        Only an establishment whose letter carried a child now on the
        account may do it (``not_authorized`` otherwise).  The account gets
        a new provisional password and expiry and is PROVISIONAL until the
        parent activates it again: the old password stops working at once.
        """
        return letters.reissue_letter(self._ctx, establishment, account_id)

    def deliver_notices(self, mailer: Mailer, limit: int = 100, *,
                        language: str | None = None) -> int:
        """Send up to *limit* pending notices through *mailer*; how many were sent.

        Run it periodically.  The notices are made from the outbox (events
        the host has published or not), in *language* (default: the
        messages' language, French unless set).  A failing send is logged
        and left for the next run; delivery is at least once, each notice
        with a stable id.  Needs the ``notices`` storage tier.
        """
        return notices.deliver_notices(self._ctx, mailer, limit, language)

    def merge(self, principal_id: str, login: str, password: str | Secret,
              idempotency_key: str | None = None) -> MergeReceipt:
        """Merge the account opened by *login* and *password* into the principal.

        Rules M1-M6.  Any problem with the login or password is
        ``invalid_credentials``; attempts count against the target login's
        merge counter and the principal's, never against anyone's sign-in.
        Repeated with the same *idempotency_key* (and the password proven
        again), it returns the first receipt, without the children that
        have left since, and changes nothing.
        """
        return merging.merge(self._ctx, principal_id, login, password, idempotency_key)

    # -- retention and the parent's own data ------------------------------------
    def purge(self, *, dry_run: bool = False,
              progress: Callable[[int], None] | None = None) -> PurgeReport:
        """Delete what the retention policy says is due; what was deleted.

        Run it every night (the command line's ``purge``, Django's
        ``account_merge_purge``).  It works in short batches, each in a unit
        of work of its own, so it can be stopped and run again, and a
        second purge at once only shares the work.  *dry_run* reports what
        would be deleted and changes nothing.  *progress* is called after
        each batch with the number of rows handled so far.  Needs the
        ``retention`` storage tier.  See ``docs/privacy.md``.
        """
        return retention.purge(self._ctx, dry_run=dry_run, progress=progress)

    def export_personal_data(self, account_id: str) -> dict[str, Any]:
        """Everything the store holds about the account and its own doings, JSON-ready.

        For the right of access (RGPD art. 15): the account, its
        credential's kind and dates (never a hash), its children and where
        each came from, the accounts merged into it, its audit records
        (sign-ins, failures at its login, merges, splits, notices sent),
        its failure counters, the receipts of its merges and the events
        that name it.  Give it to the account's owner, or to their school's
        staff; the fields are described in ``docs/privacy.md``.  Needs the
        ``retention`` storage tier.
        """
        return retention.export_personal_data(self._ctx, account_id)

    # -- reading -------------------------------------------------------------------
    def get_account(self, account_id: str) -> Account:
        """The account with this id, or ``account_not_found``."""
        return reading.get_account(self._ctx, account_id)

    def find_account(self, login: str) -> Account:
        """The account with this login (case and width folded), or ``account_not_found``.

        For establishment staff and operators: it tells whether a login
        exists, so never put it behind a form a parent can reach.
        """
        return reading.find_account(self._ctx, login)

    def resolve(self, account_id: str) -> Account:
        """The live account holding *account_id*: itself, or the one that absorbed it."""
        return reading.resolve(self._ctx, account_id)

    def children(self, account_id: str) -> tuple[Child, ...]:
        """The children attached to the account (none for an absorbed account)."""
        return tuple(a.child for a in reading.attached_children(self._ctx, account_id))

    def attached_children(self, account_id: str) -> tuple[AttachedChild, ...]:
        """The Enfants list of Mon compte: each child with its responsable and origin."""
        return reading.attached_children(self._ctx, account_id)

    def unpublished_events(self, limit: int = 100) -> list[OutboxEntry]:
        """The oldest events not yet marked published, in order."""
        return reading.unpublished_events(self._ctx, limit)

    def mark_published(self, positions: Sequence[int]) -> None:
        """Mark these outbox positions as published (positions never given are ignored)."""
        reading.mark_published(self._ctx, positions)

    def audit_trail(self, account_id: str | None = None, limit: int = 100) -> list[AuditRecord]:
        """The last audit records (about *account_id* if given), oldest first."""
        return reading.audit_trail(self._ctx, account_id, limit)

