"""MergeService: the use cases, one unit of work each.

Every method is something a parent or an establishment does.  The
expensive step, the argon2 hash, always runs *outside* a writing unit of
work so that no lock is held while hashing; what was read before hashing
is read again under lock before anything is written (no check-then-act
race).

The flow of a credential check (merge, activate, authenticate,
change_password):

1. one writing unit of work checks the throttle, reserves the attempt (it
   counts as a failure until proven otherwise) and reads the target;
2. exactly one verification, whatever the target was (rule I7);
3. on failure, the failure is audited; on success, one writing unit of work
   locks the rows, checks that nothing changed since step 1, writes the
   change, the event and the audit record, and gives the reservation back.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import attrs

from account_merge.credentials import Argon2Verifier
from account_merge.domain.account import (
    Account,
    AccountStatus,
    Credential,
    CredentialKind,
    Role,
    validate_email,
)
from account_merge.domain.audit import AuditAction, AuditRecord
from account_merge.domain.child import AttachedChild, Child, ChildLink
from account_merge.domain.establishment import Establishment
from account_merge.domain.events import (
    AccountActivated,
    AccountIssued,
    AccountsMerged,
    EmailChanged,
    MergeSplit,
    OutboxEntry,
    PasswordChanged,
)
from account_merge.domain.letter import NotificationLetter
from account_merge.domain.logins import derive_login, login_key
from account_merge.domain.passwords import (
    MAX_PASSWORD_LENGTH,
    CnilPasswordPolicy,
    PasswordPolicy,
    generate_provisional_password,
)
from account_merge.domain.receipts import MergeReceipt, SplitReceipt
from account_merge.domain.rules import check_absorbed, check_principal, plan_merge, plan_split
from account_merge.domain.secret import Secret, reveal
from account_merge.domain.throttle import ThrottlePolicy, ThrottleState
from account_merge.domain.validation import (
    MAX_LOGIN_LENGTH,
    check_aware,
    check_identifier,
    check_text,
    escape_for_log,
    has_control_characters,
)
from account_merge.exceptions import (
    AccountMergeError,
    AccountNotFound,
    ConcurrentUpdate,
    IdentityRuleRefused,
    InvalidCredentials,
    InvalidInput,
    NotAuthorized,
    PasswordPolicyError,
    PrincipalNotActive,
    TooManyAttempts,
)
from account_merge.hashpool import hash_passwords
from account_merge.ports import (
    Clock,
    CredentialVerifier,
    LoginTaken,
    Storage,
    StoredReceipt,
    UnitOfWork,
)

__all__ = ["IdentityRule", "MergeService", "same_display_name"]

logger = logging.getLogger("account_merge")

T = TypeVar("T")

#: A host's extra condition on merges (rule M6): True allows the merge.
IdentityRule = Callable[[Account, Account], bool]

_NO_ID = "-"
_LOGIN_ATTEMPTS = 20
_WRITE_RETRIES = 3
_MIN_PROVISIONAL_LENGTH, _MAX_PROVISIONAL_LENGTH = 6, 64
#: No store holds more rows than this: a larger limit means "all of them".
_MAX_LIMIT = 2**62


def _login_throttle(key: str) -> str:
    """The failure counter of a login: shared by the merge form and the owner's sign-in."""
    return f"login:{key}"


def same_display_name(principal: Account, absorbed: Account) -> bool:
    """An identity rule like ÉduConnect's: both accounts bear the same name."""
    return login_key(principal.display_name) == login_key(absorbed.display_name)


def _utc_now() -> datetime:
    return datetime.now(UTC)


@attrs.frozen
class _Target:
    """What step 1 read about the account a credential check is aimed at."""

    account: Account | None
    credential: Credential | None
    reserved_at: datetime

    def usable_hash(self, now: datetime, *, provisional: bool | None) -> str | None:
        """The hash to verify against, or None if no password can open it."""
        account, credential = self.account, self.credential
        if account is None or credential is None or not account.is_live:
            return None
        if credential.expired(now):
            return None
        is_provisional = credential.kind is CredentialKind.PROVISIONAL
        if is_provisional != (account.status is AccountStatus.PROVISIONAL):
            return None
        if provisional is not None and provisional != is_provisional:
            return None
        return credential.password_hash


class MergeService:
    """The regroupement de comptes responsables, over a storage of your choice.

    *storage* conforms to :class:`~account_merge.ports.Storage`; *verifier*
    defaults to :class:`~account_merge.credentials.Argon2Verifier` with
    argon2-cffi's defaults; *clock* is a zero-argument callable giving an
    aware datetime (UTC now by default).  Everything else is a policy with
    a documented default.
    """

    def __init__(
        self,
        storage: Storage,
        verifier: CredentialVerifier | None = None,
        clock: Clock | None = None,
        *,
        password_policy: PasswordPolicy | None = None,
        throttle: ThrottlePolicy | None = None,
        identity_rule: IdentityRule | None = None,
        provisional_validity: timedelta = timedelta(days=90),
        provisional_length: int = 8,
    ) -> None:
        if not callable(getattr(storage, "unit_of_work", None)):
            raise InvalidInput("storage", "must be a Storage (with a unit_of_work() method)")
        if verifier is not None and not all(
                callable(getattr(verifier, name, None)) for name in ("hash", "verify",
                                                                     "needs_rehash")):
            raise InvalidInput("verifier", "must be a CredentialVerifier")
        if (isinstance(provisional_length, bool) or not isinstance(provisional_length, int)
                or not _MIN_PROVISIONAL_LENGTH <= provisional_length <= _MAX_PROVISIONAL_LENGTH):
            raise InvalidInput("provisional_length",
                               f"must be an int from {_MIN_PROVISIONAL_LENGTH} "
                               f"to {_MAX_PROVISIONAL_LENGTH}")
        if not isinstance(provisional_validity, timedelta) or provisional_validity <= timedelta(0):
            raise InvalidInput("provisional_validity", "must be a positive timedelta")
        if throttle is not None and not isinstance(throttle, ThrottlePolicy):
            raise InvalidInput("throttle", "must be a ThrottlePolicy")
        if password_policy is not None and not callable(getattr(password_policy, "check", None)):
            raise InvalidInput("password_policy", "must have a check(password, *, login) method")
        if identity_rule is not None and not callable(identity_rule):
            raise InvalidInput("identity_rule", "must be callable")
        if clock is not None and not callable(clock):
            raise InvalidInput("clock", "must be a zero-argument callable")
        self.storage = storage
        self.verifier: CredentialVerifier = verifier if verifier is not None else Argon2Verifier()
        self.clock: Clock = clock if clock is not None else _utc_now
        self.password_policy: PasswordPolicy = password_policy or CnilPasswordPolicy()
        self.throttle = throttle or ThrottlePolicy()
        self.identity_rule = identity_rule
        self.provisional_validity = provisional_validity
        self.provisional_length = provisional_length

    def __repr__(self) -> str:
        return f"MergeService(storage={self.storage!r}, verifier={self.verifier!r})"

    # -- helpers ------------------------------------------------------------
    def _now(self) -> datetime:
        return check_aware("clock()", self.clock())

    @contextmanager
    def _write(self) -> Iterator[UnitOfWork]:
        with self.storage.unit_of_work(write=True) as uow:
            yield uow

    def _retry(self, step: Callable[[], T]) -> T:
        """Run a writing step again when it lost a race to a concurrent writer."""
        for attempt in range(_WRITE_RETRIES):
            try:
                return step()
            except ConcurrentUpdate:
                if attempt == _WRITE_RETRIES - 1:
                    raise
                logger.debug("concurrent update, retrying (%d)", attempt + 1)
        raise AssertionError("unreachable")  # pragma: no cover

    def _audit(self, record: AuditRecord) -> None:
        """Write one audit record in a unit of work of its own (failures)."""
        with self._write() as uow:
            uow.append_audit(record)
            uow.commit()

    @staticmethod
    def _login_arg(value: object) -> str:
        if not isinstance(value, str):
            raise InvalidInput("login", f"must be a string, not {type(value).__name__}")
        if not value.strip() or len(value) > MAX_LOGIN_LENGTH or has_control_characters(value):
            raise InvalidInput("login", f"must be 1 to {MAX_LOGIN_LENGTH} printable characters")
        return value

    @staticmethod
    def _password_arg(field: str, value: object) -> str:
        text = reveal(field, value)
        if len(text) > MAX_PASSWORD_LENGTH:
            raise InvalidInput(field, f"must be at most {MAX_PASSWORD_LENGTH} characters")
        return text

    def _check_new_password(self, password: str, login: str, *, old: str | None,
                            context: Sequence[str] = ()) -> None:
        if len(password) > MAX_PASSWORD_LENGTH:
            raise PasswordPolicyError(
                f"the password must be at most {MAX_PASSWORD_LENGTH} characters")
        if old is not None and password == old:
            raise PasswordPolicyError("the new password must differ from the current one")
        self.password_policy.check(password, login=login, context=context)

    @staticmethod
    def _load_target(uow: UnitOfWork, key: str, now: datetime) -> _Target:
        # The same storage calls whether the login exists or not (rule I7).
        account_id = uow.get_account_id_by_login(key)
        account = uow.get_account(account_id or _NO_ID)
        credential = uow.get_credential(account_id or _NO_ID)
        return _Target(account=account, credential=credential, reserved_at=now)

    def _reserve(self, uow: UnitOfWork, key: str, now: datetime, *, lock: bool) -> float:
        """Check the throttle under *key*; reserve an attempt if allowed.

        Returns the seconds to wait (0 when the attempt was reserved).
        """
        state = uow.get_throttle(key)
        wait = self.throttle.login_wait(state, now, lock=lock)
        if wait <= 0:
            uow.put_throttle(self.throttle.record_failure(state, key, now))
        return wait

    def _give_back(self, uow: UnitOfWork, key: str, at: datetime, *, reset: bool) -> None:
        if reset:
            # A success clears the counter whatever it held: nothing to read.
            uow.put_throttle(ThrottleState(key=key))
            return
        state = uow.get_throttle(key)
        if state is not None:
            uow.put_throttle(self.throttle.release(state, at))

    def _check_credentials(
        self, action: AuditAction, login: str, password: str, *, provisional: bool | None,
        actor: str | None = None,
    ) -> _Target:
        """Steps 1 and 2 for activate, authenticate and change_password."""
        now = self._now()
        key = login_key(login)
        throttle_key = _login_throttle(key)
        with self._write() as uow:
            wait = self._reserve(uow, throttle_key, now, lock=False)
            if wait > 0:
                uow.append_audit(AuditRecord(at=now, action=action, outcome=TooManyAttempts.code,
                                             actor=actor, login=escape_for_log(login)))
                uow.commit()
                raise TooManyAttempts(self.throttle.retry_after(wait))
            target = self._load_target(uow, key, now)
            uow.commit()
        ok = self.verifier.verify(target.usable_hash(now, provisional=provisional), password)
        if not ok:
            self._audit(AuditRecord(at=now, action=action, outcome=InvalidCredentials.code,
                                    actor=actor, login=escape_for_log(login),
                                    account_id=target.account.id if target.account else None))
            logger.info("%s failed for login %s", action.value, escape_for_log(login))
            raise InvalidCredentials()
        return target

    def _unchanged(self, uow: UnitOfWork, target: _Target,
                   locked: dict[str, Account] | None = None) -> Account:
        """Under lock: the target as checked in step 1, or invalid_credentials.

        *locked* holds rows this unit of work has locked already (which
        must include the target's): they are not read again.
        """
        assert target.account is not None and target.credential is not None
        if locked is None:
            locked = uow.lock_accounts([target.account.id])
        account = locked.get(target.account.id)
        credential = uow.get_credential(target.account.id)
        if (account is None or account.status is not target.account.status
                or credential is None
                or credential.password_hash != target.credential.password_hash):
            raise InvalidCredentials()
        return account

    # -- establishments --------------------------------------------------------
    def issue_account(
        self,
        establishment: Establishment,
        display_name: str,
        children: Iterable[Child] = (),
        role: Role = Role.RESPONSABLE,
        *,
        email: str | None = None,
    ) -> NotificationLetter:
        """Create a PROVISIONAL account for *display_name* and return its letter.

        A responsable account lists at least one child, a pupil's account
        exactly one (the pupil); every child is enrolled in *establishment*.
        The provisional password is printed on the letter only; the store
        keeps its argon2 hash, valid for ``provisional_validity``.
        """
        kids, email = self._issue_args(establishment, display_name, children, role, email)
        password = generate_provisional_password(self.provisional_length)
        password_hash = self.verifier.hash(password)
        return self._retry(lambda: self._store_issued(
            establishment, display_name, kids, role, email, password, password_hash))

    def issue_accounts(
        self,
        establishment: Establishment,
        families: Iterable[tuple[str, Iterable[Child]]],
        role: Role = Role.RESPONSABLE,
        *,
        workers: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[NotificationLetter]:
        """Issue one account per ``(display_name, children)`` family, hashing on every core.

        The bulk form of :meth:`issue_account`, for a school's letters: the
        argon2 hashes are computed by *workers* processes (default: one per
        CPU; 1 hashes in this process) with this service's verifier
        parameters, while each account is stored here in a unit of work of
        its own.  Letters are yielded in the order of *families*, each as
        soon as its account is stored; only a few families are in flight,
        so *families* may be a long generator.  A family is checked as
        :meth:`issue_account` checks it; an invalid one raises
        ``invalid_input`` after the families before it were issued.
        *progress*, if given, is called with the number of letters issued
        so far each time one is stored, before it is yielded.
        """
        if not isinstance(establishment, Establishment):
            raise InvalidInput("establishment", "must be an Establishment")
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                    or workers < 1):
            raise InvalidInput("workers", "must be a positive int or None")
        if isinstance(families, (str, bytes)) or not isinstance(families, Iterable):
            raise InvalidInput("families", "must be an iterable of (display_name, children)")

        def prepared() -> Iterator[tuple[tuple[str, tuple[Child, ...]], str]]:
            for family in families:
                if not isinstance(family, tuple) or len(family) != 2:
                    raise InvalidInput("families", "each family is a (display_name, children) pair")
                display_name, children = family
                kids, _ = self._issue_args(establishment, display_name, children, role, None)
                password = generate_provisional_password(self.provisional_length)
                yield (display_name, kids), password

        hashed = hash_passwords(self.verifier, prepared(), workers=workers)
        for issued, ((display_name, kids), password, password_hash) in enumerate(hashed, 1):
            letter = self._retry(functools.partial(
                self._store_issued, establishment, display_name, kids, role, None, password,
                password_hash))
            if progress is not None:
                progress(issued)
            yield letter

    def _issue_args(
        self, establishment: Establishment, display_name: str, children: Iterable[Child],
        role: Role, email: str | None,
    ) -> tuple[tuple[Child, ...], str | None]:
        """The checked children and e-mail of an account to issue."""
        if not isinstance(establishment, Establishment):
            raise InvalidInput("establishment", "must be an Establishment")
        check_text("display_name", display_name)
        if not isinstance(role, Role):
            raise InvalidInput("role", "must be a Role")
        if email is not None:
            email = validate_email(email)
        if isinstance(children, (str, bytes)) or not isinstance(children, Iterable):
            raise InvalidInput("children", "must be a sequence of Child")
        kids = tuple(children)
        if not all(isinstance(c, Child) for c in kids):
            raise InvalidInput("children", "must be a sequence of Child")
        if len({c.id for c in kids}) != len(kids):
            raise InvalidInput("children", "the same child is listed twice")
        if any(c.establishment_uai != establishment.uai for c in kids):
            raise InvalidInput("children", f"every child must be enrolled in {establishment.uai}")
        if role is Role.RESPONSABLE and not kids:
            raise InvalidInput("children", "a responsable account needs at least one child")
        if role is Role.ELEVE and len(kids) != 1:
            raise InvalidInput("children", "a pupil's account names exactly one child, the pupil")
        return kids, email

    def _store_issued(
        self, establishment: Establishment, display_name: str, kids: tuple[Child, ...],
        role: Role, email: str | None, password: str, password_hash: str,
    ) -> NotificationLetter:
        now = self._now()
        account_id = uuid.uuid4().hex
        for attempt in range(_LOGIN_ATTEMPTS):
            login = derive_login(display_name, attempt)
            account = Account(id=account_id, login=login, role=role,
                              status=AccountStatus.PROVISIONAL, display_name=display_name,
                              establishment_uai=establishment.uai, created_at=now, email=email)
            with self._write() as uow:
                if uow.get_establishment(establishment.uai) is None:
                    uow.put_establishment(establishment)
                try:
                    uow.add_account(account, login_key(login))
                except LoginTaken:
                    continue
                expires = now + self.provisional_validity
                uow.put_credential(Credential(account_id=account_id, password_hash=password_hash,
                                              kind=CredentialKind.PROVISIONAL, expires_at=expires))
                uow.add_links([
                    ChildLink(account_id=account_id, child=c, origin_account_id=account_id,
                              origin_establishment_uai=establishment.uai, via_merge=False,
                              linked_at=now)
                    for c in kids
                ])
                uow.append_event(AccountIssued(occurred_at=now, account_id=account_id,
                                               establishment_uai=establishment.uai,
                                               role=role.value,
                                               child_ids=tuple(c.id for c in kids)))
                uow.append_audit(AuditRecord(at=now, action=AuditAction.ISSUE, outcome="success",
                                             actor=f"establishment:{establishment.uai}",
                                             account_id=account_id, login=login))
                uow.commit()
            logger.info("issued account %s (%s) for %s", account_id, login, establishment.uai)
            return NotificationLetter(
                account_id=account_id, login=login, provisional_password=Secret(password),
                establishment=establishment, display_name=display_name, children=kids,
                issued_at=now, expires_at=expires,
            )
        raise ConcurrentUpdate("could not find a free login; try again")

    # -- a parent's own account -----------------------------------------------
    def activate(
        self,
        login: str,
        provisional_password: str | Secret,
        new_password: str | Secret,
        email: str | None = None,
    ) -> Account:
        """First sign-in: replace the letter's provisional password by the parent's own.

        Any problem with the login or the provisional password (unknown,
        wrong, expired, used, account merged) is ``invalid_credentials``; a
        new password the policy refuses is ``password_policy`` (checked
        first, so it tells nothing about the account).
        """
        login = self._login_arg(login)
        provisional = self._password_arg("provisional_password", provisional_password)
        new = self._password_arg("new_password", new_password)
        if email is not None:
            email = validate_email(email)
        self._check_new_password(new, login, old=provisional, context=(email or "",))
        target = self._check_credentials(AuditAction.ACTIVATE, login, provisional,
                                         provisional=True)
        new_hash = self.verifier.hash(new)

        def write() -> Account:
            now = self._now()
            with self._write() as uow:
                account = self._unchanged(uow, target)
                active = attrs.evolve(account, status=AccountStatus.ACTIVE,
                                      email=email if email is not None else account.email)
                uow.update_account(active)
                uow.put_credential(Credential(account_id=account.id, password_hash=new_hash,
                                              kind=CredentialKind.PASSWORD))
                self._give_back(uow, _login_throttle(login_key(login)), target.reserved_at,
                                reset=True)
                uow.append_event(AccountActivated(occurred_at=now, account_id=account.id))
                uow.append_audit(AuditRecord(at=now, action=AuditAction.ACTIVATE,
                                             outcome="success", actor=account.id,
                                             account_id=account.id, login=account.login))
                uow.commit()
            logger.info("activated account %s", active.id)
            return active

        return self._guarded(AuditAction.ACTIVATE, login, lambda: self._retry(write))

    def _guarded(self, action: AuditAction, login: str | None, step: Callable[[], T],
                 actor: str | None = None) -> T:
        """Run the writing step; audit a failure that happens there."""
        try:
            return step()
        except AccountMergeError as error:
            self._audit(AuditRecord(at=self._now(), action=action, outcome=error.code,
                                    actor=actor,
                                    login=escape_for_log(login) if login else None))
            raise

    def authenticate(self, login: str, password: str | Secret) -> Account:
        """Sign in to an ACTIVE account; anything else is ``invalid_credentials``.

        When the stored hash was made with other argon2 parameters than the
        current ones, it is replaced by a new hash of the same password.
        """
        login = self._login_arg(login)
        secret = self._password_arg("password", password)
        target = self._check_credentials(AuditAction.AUTHENTICATE, login, secret,
                                         provisional=False)
        credential = target.credential
        assert target.account is not None and credential is not None
        new_hash = (self.verifier.hash(secret)
                    if self.verifier.needs_rehash(credential.password_hash) else None)

        def write() -> Account:
            with self._write() as uow:
                account = self._unchanged(uow, target)
                if new_hash is not None:
                    uow.put_credential(attrs.evolve(credential, password_hash=new_hash))
                self._give_back(uow, _login_throttle(login_key(login)), target.reserved_at,
                                reset=True)
                uow.commit()
            return account

        return self._guarded(AuditAction.AUTHENTICATE, login, lambda: self._retry(write))

    def change_password(
        self, account_id: str, current_password: str | Secret, new_password: str | Secret
    ) -> None:
        """Change an ACTIVE account's password, proven by the current one."""
        account = self.get_account(account_id)
        current = self._password_arg("current_password", current_password)
        new = self._password_arg("new_password", new_password)
        if account.status is not AccountStatus.ACTIVE:
            raise PrincipalNotActive()
        self._check_new_password(new, account.login, old=current,
                                 context=(account.display_name, account.email or ""))
        target = self._check_credentials(AuditAction.CHANGE_PASSWORD, account.login, current,
                                         provisional=False, actor=account.id)
        assert target.account is not None
        if target.account.id != account.id:
            raise InvalidCredentials()
        new_hash = self.verifier.hash(new)

        def write() -> None:
            now = self._now()
            with self._write() as uow:
                self._unchanged(uow, target)
                uow.put_credential(Credential(account_id=account.id, password_hash=new_hash,
                                              kind=CredentialKind.PASSWORD))
                self._give_back(uow, _login_throttle(login_key(account.login)), target.reserved_at,
                                reset=True)
                uow.append_event(PasswordChanged(occurred_at=now, account_id=account.id))
                uow.append_audit(AuditRecord(at=now, action=AuditAction.CHANGE_PASSWORD,
                                             outcome="success", actor=account.id,
                                             account_id=account.id))
                uow.commit()

        self._guarded(AuditAction.CHANGE_PASSWORD, account.login, lambda: self._retry(write),
                      actor=account.id)

    def change_email(self, account_id: str, email: str) -> Account:
        """Change an ACTIVE account's e-mail address."""
        check_identifier("account_id", account_id)
        email = validate_email(email)

        def write() -> Account:
            now = self._now()
            with self._write() as uow:
                account = uow.lock_accounts([account_id]).get(account_id)
                if account is None:
                    raise AccountNotFound(account_id)
                if account.status is not AccountStatus.ACTIVE:
                    raise PrincipalNotActive()
                changed = attrs.evolve(account, email=email)
                uow.update_account(changed)
                uow.append_event(EmailChanged(occurred_at=now, account_id=account_id))
                uow.append_audit(AuditRecord(at=now, action=AuditAction.CHANGE_EMAIL,
                                             outcome="success", actor=account_id,
                                             account_id=account_id))
                uow.commit()
            return changed

        return self._retry(write)

    # -- merge -----------------------------------------------------------------
    def merge(
        self,
        principal_id: str,
        login: str,
        password: str | Secret,
        idempotency_key: str | None = None,
    ) -> MergeReceipt:
        """Merge the account opened by *login* and *password* into the principal.

        Rules M1-M6 of the design.  The password is the provisional one of a
        letter (account never activated) or the current one of an ACTIVE
        account.  Any problem with them is ``invalid_credentials``; attempts
        are throttled per login and per principal.  A call repeated with the
        same *idempotency_key* returns the first receipt and changes nothing.
        """
        check_identifier("principal_id", principal_id)
        login = self._login_arg(login)
        secret = self._password_arg("password", password)
        if idempotency_key is not None:
            check_identifier("idempotency_key", idempotency_key)
        key = login_key(login)
        now = self._now()
        login_throttle, principal_throttle = _login_throttle(key), f"principal:{principal_id}"

        def audit(outcome: str, account_id: str | None = None) -> AuditRecord:
            return AuditRecord(at=now, action=AuditAction.MERGE, outcome=outcome,
                               actor=principal_id, account_id=account_id,
                               login=escape_for_log(login))

        with self._write() as uow:
            principal = uow.get_account(principal_id)
            if principal is None:
                raise AccountNotFound(principal_id)
            check_principal(principal)
            if idempotency_key is not None:
                stored = uow.get_receipt(principal_id, idempotency_key)
                if stored is not None:
                    return self._replayed(stored, key)
            login_state = uow.get_throttle(login_throttle)
            principal_state = uow.get_throttle(principal_throttle)
            wait = max(self.throttle.login_wait(login_state, now, lock=True),
                       self.throttle.principal_wait(principal_state, now))
            if wait > 0:
                uow.append_audit(audit(TooManyAttempts.code))
                uow.commit()
                logger.warning("merge throttled for principal %s, login %s",
                               principal_id, escape_for_log(login))
                raise TooManyAttempts(self.throttle.retry_after(wait))
            uow.put_throttle(self.throttle.record_failure(login_state, login_throttle, now))
            uow.put_throttle(self.throttle.record_failure(principal_state, principal_throttle,
                                                          now))
            target = self._load_target(uow, key, now)
            uow.commit()

        if not self.verifier.verify(target.usable_hash(now, provisional=None), secret):
            self._audit(audit(InvalidCredentials.code,
                              target.account.id if target.account else None))
            logger.info("merge into %s refused: invalid credentials for %s",
                        principal_id, escape_for_log(login))
            raise InvalidCredentials()
        absorbed = target.account
        assert absorbed is not None

        def write() -> MergeReceipt:
            with self._write() as uow:
                if idempotency_key is not None:
                    stored = uow.get_receipt(principal_id, idempotency_key)
                    if stored is not None:
                        return self._replayed(stored, key)
                locked = uow.lock_accounts([principal_id, absorbed.id])
                current_principal = locked.get(principal_id)
                if current_principal is None:
                    raise AccountNotFound(principal_id)
                check_principal(current_principal)
                current = self._unchanged(uow, target, locked)
                check_absorbed(current_principal, current)
                if self.identity_rule is not None and not self.identity_rule(
                        current_principal, current):
                    raise IdentityRuleRefused()
                plan = plan_merge(current_principal, current, uow.links(principal_id),
                                  uow.links(current.id), uow.accounts_merged_into(current.id),
                                  now)
                uow.update_account(plan.absorbed)
                for account in plan.repointed:
                    uow.update_account(account)
                uow.delete_credential(current.id)
                uow.remove_links(plan.removed)
                uow.add_links(plan.added)
                receipt = MergeReceipt(principal_id=principal_id, absorbed_id=current.id,
                                       moved=plan.moved, children=plan.children)
                if idempotency_key is not None:
                    uow.put_receipt(StoredReceipt(principal_id=principal_id, key=idempotency_key,
                                                  login_key=key, receipt=receipt))
                self._give_back(uow, login_throttle, now, reset=True)
                self._give_back(uow, principal_throttle, now, reset=False)
                uow.append_event(AccountsMerged(occurred_at=now, principal_id=principal_id,
                                                absorbed_id=current.id,
                                                moved_child_ids=tuple(c.id for c in plan.moved)))
                uow.append_audit(audit("success", current.id))
                uow.commit()
            logger.info("merged %s into %s (%d children moved)",
                        receipt.absorbed_id, principal_id, len(receipt.moved))
            return receipt

        return self._guarded(AuditAction.MERGE, login, lambda: self._retry(write),
                             actor=principal_id)

    @staticmethod
    def _replayed(stored: StoredReceipt, key: str) -> MergeReceipt:
        if stored.login_key != key:
            raise InvalidInput("idempotency_key", "was already used for a merge of another login")
        return stored.receipt

    # -- split -----------------------------------------------------------------
    def split(self, establishment: Establishment, account_id: str) -> SplitReceipt:
        """Undo merges, for the children of *establishment* (rules S1-S3).

        Only an establishment can split, and only its own children that
        joined the account through a merge.  They move to a new PROVISIONAL
        responsable account for the responsable concerned, whose letter the
        receipt carries; the account keeps every other child.  If
        *account_id* was itself absorbed, the split applies to the live
        account holding it.
        """
        if not isinstance(establishment, Establishment):
            raise InvalidInput("establishment", "must be an Establishment")
        check_identifier("account_id", account_id)
        password = generate_provisional_password(self.provisional_length)
        password_hash = self.verifier.hash(password)
        actor = f"establishment:{establishment.uai}"

        def write() -> SplitReceipt:
            now = self._now()
            new_id = uuid.uuid4().hex
            with self._write() as uow:
                if uow.get_establishment(establishment.uai) is None:
                    raise NotAuthorized("unknown establishment")
                account = uow.get_account(account_id)
                if account is None:
                    raise AccountNotFound(account_id)
                live_id = account.merged_into or account.id
                live = uow.lock_accounts([live_id]).get(live_id)
                if live is None:
                    raise AccountNotFound(live_id)
                plan = plan_split(establishment, live, uow.links(live_id))
                origin = uow.get_account(plan.origin_account_id)
                display_name = origin.display_name if origin is not None else live.display_name
                for attempt in range(_LOGIN_ATTEMPTS):
                    login = derive_login(display_name, attempt)
                    new = Account(id=new_id, login=login, role=Role.RESPONSABLE,
                                  status=AccountStatus.PROVISIONAL, display_name=display_name,
                                  establishment_uai=establishment.uai, created_at=now)
                    try:
                        uow.add_account(new, login_key(login))
                        break
                    except LoginTaken:
                        continue
                else:
                    raise ConcurrentUpdate("could not find a free login; try again")
                expires = now + self.provisional_validity
                uow.put_credential(Credential(account_id=new_id, password_hash=password_hash,
                                              kind=CredentialKind.PROVISIONAL,
                                              expires_at=expires))
                uow.remove_links(plan.removed)
                uow.add_links([
                    ChildLink(account_id=new_id, child=child, origin_account_id=new_id,
                              origin_establishment_uai=establishment.uai, via_merge=False,
                              linked_at=now)
                    for child in plan.moved
                ])
                uow.append_event(MergeSplit(occurred_at=now, principal_id=live_id,
                                            new_account_id=new_id,
                                            establishment_uai=establishment.uai,
                                            moved_child_ids=tuple(c.id for c in plan.moved)))
                uow.append_audit(AuditRecord(at=now, action=AuditAction.SPLIT, outcome="success",
                                             actor=actor, account_id=live_id,
                                             detail=f"new account {new_id}"))
                uow.commit()
            logger.info("split %d children of %s from %s into %s",
                        len(plan.moved), establishment.uai, live_id, new_id)
            letter = NotificationLetter(
                account_id=new_id, login=login, provisional_password=Secret(password),
                establishment=establishment, display_name=display_name, children=plan.moved,
                issued_at=now, expires_at=expires,
            )
            return SplitReceipt(principal_id=live_id, moved=plan.moved, letter=letter)

        return self._guarded(AuditAction.SPLIT, None, lambda: self._retry(write), actor=actor)

    # -- reading -----------------------------------------------------------------
    def get_account(self, account_id: str) -> Account:
        """The account with this id, or ``account_not_found``."""
        check_identifier("account_id", account_id)
        with self.storage.unit_of_work(write=False) as uow:
            account = uow.get_account(account_id)
        if account is None:
            raise AccountNotFound(account_id)
        return account

    def find_account(self, login: str) -> Account:
        """The account with this login (case and width folded), or ``account_not_found``.

        For establishment staff and operators.  It tells whether a login
        exists, so never put it behind a form a parent can reach: parents
        reach accounts only through their credentials.
        """
        login = self._login_arg(login)
        with self.storage.unit_of_work(write=False) as uow:
            account_id = uow.get_account_id_by_login(login_key(login))
            account = uow.get_account(account_id) if account_id is not None else None
        if account is None:
            raise AccountNotFound(login)
        return account

    def resolve(self, account_id: str) -> Account:
        """The live account holding *account_id*: itself, or the one that absorbed it."""
        check_identifier("account_id", account_id)
        with self.storage.unit_of_work(write=False) as uow:
            account = uow.get_account(account_id)
            if account is None:
                raise AccountNotFound(account_id)
            if account.merged_into is not None:
                live = uow.get_account(account.merged_into)
                if live is None:
                    raise AccountNotFound(account.merged_into)
                return live
            return account

    def children(self, account_id: str) -> tuple[Child, ...]:
        """The children attached to the account (none for an absorbed account)."""
        return tuple(a.child for a in self.attached_children(account_id))

    def attached_children(self, account_id: str) -> tuple[AttachedChild, ...]:
        """The children with their responsable and where each came from.

        This is the Enfants list of Mon compte: each child with the name of
        the responsable whose account holds it.
        """
        check_identifier("account_id", account_id)
        with self.storage.unit_of_work(write=False) as uow:
            account = uow.get_account(account_id)
            if account is None:
                raise AccountNotFound(account_id)
            links = uow.links(account_id)
        return tuple(
            AttachedChild(child=link.child, responsable=account.display_name,
                          origin_account_id=link.origin_account_id,
                          origin_establishment_uai=link.origin_establishment_uai,
                          via_merge=link.via_merge)
            for link in links
        )

    @staticmethod
    def _limit_arg(limit: object) -> int:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidInput("limit", "must be a positive int")
        return min(limit, _MAX_LIMIT)

    def unpublished_events(self, limit: int = 100) -> list[OutboxEntry]:
        """The oldest events not yet marked published, in order."""
        limit = self._limit_arg(limit)
        with self.storage.unit_of_work(write=False) as uow:
            return uow.unpublished(limit)

    def mark_published(self, positions: Sequence[int]) -> None:
        """Mark these outbox positions as published (positions never given are ignored)."""
        if isinstance(positions, (str, bytes)) or not isinstance(positions, Iterable):
            raise InvalidInput("positions", "must be a sequence of ints")
        wanted = list(positions)
        if not all(isinstance(p, int) and not isinstance(p, bool) for p in wanted):
            raise InvalidInput("positions", "must be a sequence of ints")
        with self._write() as uow:
            uow.mark_published([p for p in wanted if 1 <= p <= _MAX_LIMIT])
            uow.commit()

    def audit_trail(self, account_id: str | None = None, limit: int = 100) -> list[AuditRecord]:
        """The last audit records (about *account_id* if given), oldest first."""
        if account_id is not None:
            check_identifier("account_id", account_id)
        limit = self._limit_arg(limit)
        with self.storage.unit_of_work(write=False) as uow:
            return uow.audit_records(account_id, limit)
