"""The credential protocol: how every use case that takes a password checks it.

One object, :class:`CredentialCheck`, runs the steps for activate,
authenticate, change_password and merge, so that each of them reads top
to bottom as its own steps:

1. :meth:`CredentialCheck.prove`, step 1: one writing unit of work reads
   the target account by login (with whatever else the use case asks
   for) and *counts the attempt* against its counters in the same call,
   before any password is checked; a counter over its limit, or a
   precondition of the use case (say, an inactive principal), rolls that
   back, so nothing is counted;
2. step 2: exactly one verification, outside any lock and any
   transaction, against the hash :func:`~account_merge.domain.proofs.openable_hash`
   names for the attempt's purpose, or a dummy (rule I7); a failure is
   audited (never naming the target account, which would tell whether the
   login exists) and raised as ``invalid_credentials``;
3. :meth:`CredentialCheck.finish`, step 3: one writing unit of work locks
   the rows, checks the target is unchanged since step 1, writes the use
   case's change set with its event and audit record, and gives the
   attempt back (or clears the counter); a lost race runs the step again;
   an error there is audited.  :meth:`CredentialCheck.finish_alone` is the
   same in one write with preconditions, for a step that only records the
   success (a sign-in).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TypeVar

import attrs

from account_merge.domain.audit import AuditAction, AuditRecord
from account_merge.domain.logins import login_key
from account_merge.domain.proofs import Purpose, openable_hash
from account_merge.domain.validation import escape_for_log
from account_merge.exceptions import (
    ExpectationFailed,
    InvalidCredentials,
    TooManyAttempts,
)
from account_merge.ports.storage import NOTHING, AccountRecord, ChangeSet, Expect, Fetch, Fetched
from account_merge.service.context import Context, logger

__all__ = ["Attempt", "CredentialCheck", "HashChooser", "Proof", "hash_for"]

R = TypeVar("R")

#: Chooses the hash step 2 verifies, from what step 1 read: ``(target, fetched, now)``.
HashChooser = Callable[[AccountRecord | None, Fetched, datetime], str | None]


def hash_for(purpose: Purpose) -> HashChooser:
    """The chooser of the hash that opens the target for *purpose* (the common case)."""
    def choose(target: AccountRecord | None, _: Fetched, now: datetime) -> str | None:
        if target is None:
            return None
        return openable_hash(target.account, target.credential, now, purpose)
    return choose


@attrs.frozen(kw_only=True)
class Attempt:
    """One password typed for one purpose.

    ``counters`` are the throttle keys the attempt counts against;
    ``also`` what else step 1 reads (a principal, a receipt); ``precheck``
    a test of what step 1 read that may refuse the attempt before it is
    counted; ``choose_hash`` names the hash to verify.
    """

    action: AuditAction
    login: str = attrs.field(repr=False)
    password: str = attrs.field(repr=False)
    counters: tuple[str, ...]
    choose_hash: HashChooser
    actor: str | None = None
    also: Fetch = NOTHING
    precheck: Callable[[Fetched], None] | None = None

    @property
    def login_key(self) -> str:
        """The typed login, normalised."""
        return login_key(self.login)

    def audit(self, at: datetime, outcome: str, account_id: str | None = None) -> AuditRecord:
        """An audit record of this attempt."""
        return AuditRecord(at=at, action=self.action, outcome=outcome, actor=self.actor,
                           account_id=account_id, login=escape_for_log(self.login))


@attrs.frozen(kw_only=True)
class Proof:
    """A password proven in step 2: the target as step 1 read it, and what else it read."""

    attempt: Attempt
    record: AccountRecord
    fetched: Fetched
    at: datetime

    @property
    def account_id(self) -> str:
        """The id of the account the password opened."""
        return self.record.account.id

    def expectation(self) -> Expect:
        """The precondition that the account is still as it was proven."""
        credential = self.record.credential
        return Expect(self.account_id, self.record.account.status,
                      credential.password_hash if credential is not None else None)


def _unchanged(current: AccountRecord | None, proven: AccountRecord) -> bool:
    if current is None or current.account.status is not proven.account.status:
        return False
    now_hash = current.credential.password_hash if current.credential else None
    then_hash = proven.credential.password_hash if proven.credential else None
    return now_hash == then_hash


class CredentialCheck:
    """Steps 1 to 3 of every credential-bearing use case (see the module docstring)."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def prove(self, attempt: Attempt) -> Proof:
        """Steps 1 and 2: count the attempt, then verify the password exactly once."""
        ctx = self._ctx
        throttle = ctx.policies.throttle
        now = ctx.now()
        key = attempt.login_key
        request = attrs.evolve(attempt.also, logins=(key, *attempt.also.logins),
                               count=attempt.counters, at=now, keep=throttle.keep)
        with ctx.writing() as uow:
            fetched = uow.fetch(request)
            if attempt.precheck is not None:
                attempt.precheck(fetched)  # raising rolls the count back
            wait = max((throttle.wait(fetched.throttles[k], now) for k in attempt.counters),
                       default=0.0)
            if wait <= 0:
                uow.commit()
        if wait > 0:  # the unit of work rolled the count back
            ctx.audit(attempt.audit(now, TooManyAttempts.code))
            logger.warning("%s throttled for login %s", attempt.action.value,
                           escape_for_log(attempt.login))
            raise TooManyAttempts(throttle.retry_after(wait))
        target = fetched.by_login.get(key)
        if not ctx.verifier.verify(attempt.choose_hash(target, fetched, now), attempt.password):
            ctx.audit(attempt.audit(now, InvalidCredentials.code))
            logger.info("%s failed for login %s", attempt.action.value,
                        escape_for_log(attempt.login))
            raise InvalidCredentials()
        assert target is not None
        return Proof(attempt=attempt, record=target, fetched=fetched, at=now)

    def finish(
        self,
        proof: Proof,
        build: Callable[[Fetched, AccountRecord], tuple[ChangeSet, R]],
        *,
        fetch: Fetch = NOTHING,
        clear: Sequence[str] = (),
        release: Sequence[str] = (),
    ) -> R:
        """Step 3: under lock, check the target is unchanged and write what *build* gives.

        *fetch* names what else to read (the target account is always read
        and locked); *build* gets what was read and the target, and returns
        the change set and the result.  The counters in *clear* start again
        (a success); those in *release* give the attempt back.
        """
        ctx = self._ctx
        throttle = ctx.policies.throttle
        # The counters it writes are locked with the rows, before them (rule 2's order).
        request = attrs.evolve(fetch, accounts=(proof.account_id, *fetch.accounts),
                               throttles=(*fetch.throttles, *release, *clear), lock=True)

        def write() -> R:
            with ctx.writing() as uow:
                fetched = uow.fetch(request)
                current = fetched.accounts.get(proof.account_id)
                if current is None or not _unchanged(current, proof.record):
                    raise InvalidCredentials()
                changes, result = build(fetched, current)
                give_back = ChangeSet(throttles=(
                    *(throttle.cleared(k) for k in clear),
                    *(throttle.release(fetched.throttles[k], proof.at) for k in release),
                ))
                uow.apply(changes + give_back)
                uow.commit()
            return result

        attempt = proof.attempt
        return ctx.guarded(attempt.action, attempt.login, write, actor=attempt.actor)

    def finish_alone(self, proof: Proof, changes: ChangeSet, *,
                     clear: Sequence[str] = ()) -> None:
        """Step 3 as one write: *changes*, if the target is still as proven.

        For a step whose only writes are the record of the success, so no
        row needs reading first; the counters in *clear* start again.
        """
        ctx = self._ctx
        throttle = ctx.policies.throttle
        guarded = ChangeSet(expect=(proof.expectation(),),
                            throttles=tuple(throttle.cleared(k) for k in clear)) + changes

        def write() -> None:
            try:
                ctx.storage.write(guarded)
            except ExpectationFailed:
                raise InvalidCredentials() from None

        attempt = proof.attempt
        ctx.guarded(attempt.action, attempt.login, write, actor=attempt.actor)
