"""The merge and split rules (M1-M6, S1-S3) as pure functions.

The service loads what the rules need inside a unit of work, asks these
functions for a plan (or an error), and stores the plan.  Nothing here
touches storage or hashing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import attrs

from account_merge.domain.account import Account, AccountStatus, Role
from account_merge.domain.child import Child, ChildLink
from account_merge.domain.establishment import Establishment
from account_merge.exceptions import (
    NotAuthorized,
    NothingToSplit,
    NotResponsable,
    PrincipalNotActive,
    SameAccount,
)

__all__ = [
    "MergePlan",
    "SplitGroup",
    "SplitPlan",
    "check_absorbed",
    "check_principal",
    "plan_merge",
    "plan_split",
]


def check_principal(principal: Account) -> None:
    """M1: the principal is ACTIVE and RESPONSABLE."""
    if principal.status is not AccountStatus.ACTIVE:
        raise PrincipalNotActive()
    if principal.role is not Role.RESPONSABLE:
        raise NotResponsable()


def check_absorbed(principal: Account, absorbed: Account) -> None:
    """M3 and M4, once the credentials (M2) are proven."""
    if absorbed.id == principal.id:
        raise SameAccount()
    if absorbed.role is not Role.RESPONSABLE:
        raise NotResponsable()


@attrs.frozen
class MergePlan:
    """What a merge writes (M5)."""

    absorbed: Account
    repointed: tuple[Account, ...]
    removed: tuple[ChildLink, ...]
    added: tuple[ChildLink, ...]
    moved: tuple[Child, ...]
    children: tuple[Child, ...]


def plan_merge(
    principal: Account,
    absorbed: Account,
    principal_links: Sequence[ChildLink],
    absorbed_links: Sequence[ChildLink],
    previously_absorbed: Sequence[Account],
    now: datetime,
) -> MergePlan:
    """M5: the absorbed account's children join the principal's.

    A child the principal already holds stays once (its link unchanged);
    every other child gets a link that keeps its origin and says it came
    through a merge.  The absorbed account becomes MERGED into the
    principal, and the accounts it had absorbed now point at the principal
    directly, so ``merged_into`` is always one hop from a live account.
    """
    check_principal(principal)
    check_absorbed(principal, absorbed)
    held = {link.child.id for link in principal_links}
    added = tuple(
        ChildLink(
            account_id=principal.id,
            child=link.child,
            origin_account_id=link.origin_account_id,
            origin_establishment_uai=link.origin_establishment_uai,
            via_merge=True,
            linked_at=now,
        )
        for link in absorbed_links
        if link.child.id not in held
    )
    return MergePlan(
        absorbed=attrs.evolve(absorbed, status=AccountStatus.MERGED, merged_into=principal.id),
        repointed=tuple(attrs.evolve(a, merged_into=principal.id) for a in previously_absorbed),
        removed=tuple(absorbed_links),
        added=added,
        moved=tuple(link.child for link in added),
        children=tuple(link.child for link in principal_links) + tuple(l.child for l in added),
    )


@attrs.frozen
class SplitGroup:
    """The children one new account receives: those of one origin letter."""

    origin_account_id: str
    links: tuple[ChildLink, ...]

    @property
    def children(self) -> tuple[Child, ...]:
        """The children, in the order they were linked."""
        return tuple(link.child for link in self.links)


@attrs.frozen
class SplitPlan:
    """What a split writes (S3), apart from the new accounts themselves."""

    removed: tuple[ChildLink, ...]
    groups: tuple[SplitGroup, ...]

    @property
    def moved(self) -> tuple[Child, ...]:
        """Every child that leaves the account, in the order they were linked."""
        return tuple(link.child for link in self.removed)


def plan_split(
    establishment: Establishment,
    account: Account,
    links: Sequence[ChildLink],
) -> SplitPlan:
    """S2: the children whose merged letter *establishment* issued.

    Authority follows the letter, not the child: a link whose letter the
    establishment issued (``origin_establishment_uai``) is the
    establishment's to split, whichever school the child attends now.  An
    establishment with no such link on the account has no say over it
    (``not_authorized``); one whose links there all came with the account's
    own letter has nothing to split.  The children that leave are grouped
    by the letter that first carried them: one new account per group, so
    that no responsable is handed another one's child.
    """
    if account.role is not Role.RESPONSABLE or not account.is_live:
        raise NotAuthorized("only a live responsable account can be split")
    own = [link for link in links if link.origin_establishment_uai == establishment.uai]
    if not own:
        raise NotAuthorized("the establishment has no child on this account")
    removed = tuple(link for link in own if link.via_merge)
    if not removed:
        raise NothingToSplit()
    groups: dict[str, list[ChildLink]] = {}
    for link in removed:
        groups.setdefault(link.origin_account_id, []).append(link)
    return SplitPlan(
        removed=removed,
        groups=tuple(SplitGroup(origin, tuple(group)) for origin, group in groups.items()),
    )
