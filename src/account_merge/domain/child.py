"""Children (élèves) and the links that attach them to responsable accounts."""

from __future__ import annotations

from datetime import datetime

import attrs

from account_merge.domain.establishment import validate_uai
from account_merge.domain.validation import check_aware, check_identifier, check_text

__all__ = ["AttachedChild", "Child", "ChildLink"]


def _id(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    check_identifier(f"child {attribute.name}", value)


def _name(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    check_text(f"child {attribute.name}", value)


def _uai(_: object, __: object, value: str) -> None:
    validate_uai(value)


def _upper(value: object) -> object:
    return value.strip().upper() if isinstance(value, str) else value


@attrs.frozen
class Child:
    """A pupil enrolled in one establishment.

    ``id`` is the school's stable identifier for the pupil (for example the
    INE); two letters naming the same ``id`` name the same child.
    """

    id: str = attrs.field(validator=_id)
    first_name: str = attrs.field(validator=_name)
    last_name: str = attrs.field(validator=_name)
    establishment_uai: str = attrs.field(converter=_upper, validator=_uai)


@attrs.frozen
class ChildLink:
    """A child attached to an account, remembering where it came from.

    ``origin_account_id`` is the account whose letter first carried the
    child and ``origin_establishment_uai`` the establishment that issued
    that letter; ``via_merge`` is true when the child joined this account
    through a merge (only such children can be split away).
    """

    account_id: str = attrs.field(validator=lambda _, __, v: check_identifier("account_id", v))
    child: Child
    origin_account_id: str
    origin_establishment_uai: str
    via_merge: bool
    linked_at: datetime = attrs.field(validator=lambda _, __, v: check_aware("linked_at", v))


@attrs.frozen
class AttachedChild:
    """A child as the Enfants list shows it: with the responsable holding it."""

    child: Child
    responsable: str
    origin_account_id: str
    origin_establishment_uai: str
    via_merge: bool
