"""Establishments: what an operator records about the schools the store serves.

An establishment becomes known to the store when an operator registers it
(or when it first issues a letter).  Splitting needs a known establishment:
the host vouches for the :class:`Establishment` it passes, and the store
confirms the school is one it serves.
"""

from __future__ import annotations

from account_merge.domain.audit import AuditAction, AuditRecord
from account_merge.domain.establishment import Establishment, validate_uai
from account_merge.domain.validation import check_text
from account_merge.ports.storage import ChangeSet, Fetch
from account_merge.service.arguments import establishment_arg
from account_merge.service.context import Context

__all__ = ["find_establishment", "register_establishment"]


def register_establishment(ctx: Context, establishment: Establishment,
                           actor: str | None) -> Establishment:
    """Record *establishment* (or its new name), audited with *actor*."""
    establishment_arg(establishment)
    if actor is not None:
        check_text("actor", actor)
    now = ctx.now()
    ctx.storage.write(ChangeSet(
        establishments=(establishment,),
        audit=(AuditRecord(at=now, action=AuditAction.REGISTER_ESTABLISHMENT, outcome="success",
                           actor=actor, detail=f"{establishment.uai} {establishment.name}"),),
    ))
    return establishment


def find_establishment(ctx: Context, uai: str) -> Establishment | None:
    """The establishment the store knows under *uai*, or None."""
    uai = validate_uai(uai)
    with ctx.reading() as uow:
        return uow.fetch(Fetch(establishments=(uai,))).establishments.get(uai)
