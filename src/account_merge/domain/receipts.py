"""What a merge or a split hands back to the host."""

from __future__ import annotations

from typing import Any

import attrs

from account_merge.domain.child import Child
from account_merge.domain.letter import NotificationLetter

__all__ = ["MERGE_CONFIRMATION", "MergeReceipt", "SplitReceipt"]

#: The confirmation a parent reads after a merge (Scolarité Services' wording).
MERGE_CONFIRMATION = (
    "L'opération de regroupement des comptes a été effectuée avec succès. "
    "Seul le compte avec lequel vous êtes connecté reste disponible. "
    "Vous pourrez visualiser vos nouvelles informations d'ici quelques instants."
)


@attrs.frozen
class MergeReceipt:
    """The outcome of a merge: who absorbed whom, and the children now held."""

    principal_id: str
    absorbed_id: str
    moved: tuple[Child, ...]
    children: tuple[Child, ...]
    message: str = MERGE_CONFIRMATION

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form, for stores that keep receipts of idempotent calls."""
        return {
            "principal_id": self.principal_id,
            "absorbed_id": self.absorbed_id,
            "moved": [attrs.asdict(c) for c in self.moved],
            "children": [attrs.asdict(c) for c in self.children],
            "message": self.message,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MergeReceipt:
        """The receipt :meth:`to_dict` gave."""
        return cls(
            principal_id=data["principal_id"],
            absorbed_id=data["absorbed_id"],
            moved=tuple(Child(**c) for c in data["moved"]),
            children=tuple(Child(**c) for c in data["children"]),
            message=data["message"],
        )


@attrs.frozen
class SplitReceipt:
    """The outcome of a split: the children moved and the new accounts' letters.

    A split makes one new account, with its letter, per letter the moved
    children had first come with (each for the responsable that letter
    named), so that no new account holds another responsable's child;
    ``letters`` lists them in the order the children were linked, and
    ``letter`` is the first.
    """

    principal_id: str
    moved: tuple[Child, ...]
    letters: tuple[NotificationLetter, ...] = attrs.field(
        validator=attrs.validators.min_len(1))

    @property
    def letter(self) -> NotificationLetter:
        """The first new account's letter (the only one when one letter's children moved)."""
        return self.letters[0]

    @property
    def new_account_id(self) -> str:
        """The id of the first account created (see :attr:`letter`)."""
        return self.letter.account_id

    @property
    def new_account_ids(self) -> tuple[str, ...]:
        """The ids of every account the split created, in the order of :attr:`letters`."""
        return tuple(letter.account_id for letter in self.letters)
