"""Merging: a parent gathers another responsable account under the principal (M1-M6).

The parent, signed in to the principal, types the other account's login
and password (a letter's provisional one, or the real one of an activated
account).  The steps are the credential protocol's
(:mod:`account_merge.service.credential_check`): count the attempt against
the target login's merge counter and the principal's, verify once, then
under lock apply the plan of :func:`~account_merge.domain.rules.plan_merge`.
"""

from __future__ import annotations

from datetime import datetime

from account_merge.domain.account import AccountStatus
from account_merge.domain.audit import AuditAction
from account_merge.domain.events import AccountsMerged
from account_merge.domain.logins import login_key
from account_merge.domain.proofs import Purpose, openable_hash
from account_merge.domain.receipts import MergeReceipt
from account_merge.domain.rules import check_absorbed, check_principal, plan_merge
from account_merge.domain.secret import Secret
from account_merge.domain.throttle import merge_key, principal_key
from account_merge.domain.validation import check_identifier
from account_merge.exceptions import AccountNotFound, IdentityRuleRefused, InvalidInput
from account_merge.ports.storage import (
    AccountRecord,
    ChangeSet,
    Fetch,
    Fetched,
    StoredReceipt,
)
from account_merge.service.arguments import login_arg, password_arg
from account_merge.service.context import Context, logger
from account_merge.service.credential_check import Attempt, CredentialCheck

__all__ = ["merge"]


def _replayed(stored: StoredReceipt, principal_links: Fetched, principal_id: str) -> MergeReceipt:
    """The stored receipt, without the children that have left the principal since."""
    held = {link.child.id for link in principal_links.links.get(principal_id, ())}
    receipt = stored.receipt
    return MergeReceipt(
        principal_id=receipt.principal_id, absorbed_id=receipt.absorbed_id,
        moved=tuple(c for c in receipt.moved if c.id in held),
        children=tuple(c for c in receipt.children if c.id in held),
        message=receipt.message,
    )


def merge(ctx: Context, principal_id: str, login: str, password: str | Secret,
          idempotency_key: str | None) -> MergeReceipt:
    """Merge the account opened by *login* and *password* into the principal."""
    check_identifier("principal_id", principal_id)
    login = login_arg(login)
    secret = password_arg("password", password)
    if idempotency_key is not None:
        check_identifier("idempotency_key", idempotency_key)
    key = login_key(login)
    receipt_keys = ((principal_id, idempotency_key),) if idempotency_key is not None else ()

    def stored_receipt(fetched: Fetched) -> StoredReceipt | None:
        return fetched.receipts.get(receipt_keys[0]) if receipt_keys else None

    def precheck(fetched: Fetched) -> None:
        # M1 before anything about the target: it tells nothing about the login.
        principal = fetched.accounts.get(principal_id)
        if principal is None:
            raise AccountNotFound(principal_id)
        check_principal(principal.account)
        stored = stored_receipt(fetched)
        if stored is not None and stored.login_key != key:
            raise InvalidInput("idempotency_key", "was already used for a merge of another login")

    def is_replay(target: AccountRecord | None, fetched: Fetched) -> bool:
        return (target is not None and stored_receipt(fetched) is not None
                and target.account.status is AccountStatus.MERGED
                and target.account.merged_into == principal_id)

    def choose(target: AccountRecord | None, fetched: Fetched, now: datetime) -> str | None:
        if target is None:
            return None
        # A repeated call proves the password again, against what it opened then.
        purpose = Purpose.MERGE_REPLAY if is_replay(target, fetched) else Purpose.MERGE
        return openable_hash(target.account, target.credential, now, purpose)

    merge_counter, principal_counter = merge_key(key), principal_key(principal_id)
    check = CredentialCheck(ctx)
    attempt = Attempt(action=AuditAction.MERGE, login=login, password=secret,
                      counters=(merge_counter, principal_counter), choose_hash=choose,
                      actor=principal_id, precheck=precheck,
                      also=Fetch(accounts=(principal_id,), receipts=receipt_keys))
    proof = check.prove(attempt)
    replay = is_replay(proof.record, proof.fetched)

    def build(fetched: Fetched, absorbed: AccountRecord) -> tuple[ChangeSet, MergeReceipt]:
        stored = stored_receipt(fetched)
        if stored is not None:  # this call, or one with the same key, merged already
            if stored.login_key != key:
                raise InvalidInput("idempotency_key",
                                   "was already used for a merge of another login")
            return ChangeSet(), _replayed(stored, fetched, principal_id)
        principal = fetched.accounts.get(principal_id)
        if principal is None:
            raise AccountNotFound(principal_id)
        check_principal(principal.account)
        check_absorbed(principal.account, absorbed.account)
        rule = ctx.policies.identity_rule
        if rule is not None and not rule(principal.account, absorbed.account):
            raise IdentityRuleRefused()
        now = ctx.now()
        plan = plan_merge(principal.account, absorbed.account, fetched.links[principal_id],
                          fetched.links[absorbed.account.id], fetched.absorbed[absorbed.account.id],
                          now)
        receipt = MergeReceipt(principal_id=principal_id, absorbed_id=absorbed.account.id,
                               moved=plan.moved, children=plan.children)
        return ChangeSet(
            accounts=(plan.absorbed, *plan.repointed),
            unlink=plan.removed,
            link=plan.added,
            receipts=tuple(StoredReceipt(principal_id=principal_id, key=k, login_key=key,
                                         receipt=receipt) for _, k in receipt_keys),
            events=(AccountsMerged(occurred_at=now, principal_id=principal_id,
                                   absorbed_id=absorbed.account.id,
                                   moved_child_ids=tuple(c.id for c in plan.moved)),),
            audit=(attempt.audit(now, "success", absorbed.account.id),),
        ), receipt

    receipt = check.finish(
        proof, build,
        fetch=Fetch(accounts=(principal_id,), links=(principal_id, proof.account_id),
                    absorbed=(proof.account_id,), receipts=receipt_keys),
        clear=(merge_counter,), release=(principal_counter,))
    if not replay:
        logger.info("merged %s into %s (%d children moved)",
                    receipt.absorbed_id, principal_id, len(receipt.moved))
    return receipt
