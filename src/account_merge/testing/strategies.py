"""Hypothesis strategies for account_merge's values and for populated stores.

>>> from hypothesis import given
>>> @given(establishments())
... def test_uai_is_valid(school):
...     assert len(school.uai) == 8
>>> test_uai_is_valid()
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
from hypothesis import strategies as st

from account_merge.domain.account import Account
from account_merge.domain.child import Child
from account_merge.domain.establishment import Establishment, uai_check_letter
from account_merge.domain.letter import NotificationLetter
from account_merge.ports import Storage
from account_merge.service import MergeService
from account_merge.storage.memory import InMemoryStorage
from account_merge.testing import FakeClock, fast_verifier

__all__ = [
    "Identity",
    "Population",
    "children",
    "establishments",
    "identities",
    "names",
    "populated_services",
    "pupil_identities",
    "responsable_identities",
    "uais",
]

_LETTERS = "abcdefghijklmnopqrstuvwxyzéèêëàâîïôöûüçñ"


def uais() -> st.SearchStrategy[str]:
    """Valid UAIs: seven digits and their check letter."""
    return st.integers(0, 9_999_999).map(lambda n: f"{n:07d}" + uai_check_letter(f"{n:07d}"))


def names(max_words: int = 3) -> st.SearchStrategy[str]:
    """French-looking names: one to *max_words* capitalised words, hyphens allowed."""
    word = st.text(_LETTERS, min_size=1, max_size=12).map(str.capitalize)
    compound = st.lists(word, min_size=1, max_size=2).map("-".join)
    return st.lists(compound, min_size=1, max_size=max_words).map(" ".join)


def establishments() -> st.SearchStrategy[Establishment]:
    """Establishments with valid UAIs and plausible names."""
    kinds = st.sampled_from(["Collège", "Lycée", "École élémentaire", "Lycée professionnel"])
    return st.builds(lambda uai, kind, name: Establishment(uai, f"{kind} {name}"),
                     uais(), kinds, names(2))


def children(uai: str | None = None) -> st.SearchStrategy[Child]:
    """Pupils, enrolled in *uai* (or in any valid establishment)."""
    return st.builds(
        Child,
        id=st.text("0123456789ABCDEFGHJK", min_size=11, max_size=11).map("ine-".__add__),
        first_name=names(1),
        last_name=names(2),
        establishment_uai=st.just(uai) if uai is not None else uais(),
    )


@attrs.frozen
class Identity:
    """A person as an establishment knows them."""

    first_name: str
    last_name: str

    @property
    def display_name(self) -> str:
        """First name then last name, as letters print it."""
        return f"{self.first_name} {self.last_name}"


def identities() -> st.SearchStrategy[Identity]:
    """Any person."""
    return st.builds(Identity, names(1), names(2))


def responsable_identities() -> st.SearchStrategy[Identity]:
    """Legal guardians (civility-free names, as the ENT exports them)."""
    return identities()


def pupil_identities() -> st.SearchStrategy[Identity]:
    """Pupils' own identities, for pupil (élève) accounts."""
    return identities()


@attrs.define
class Population:
    """A service with accounts in every state, and what was done to them."""

    service: MergeService
    letters: list[NotificationLetter]
    principals: list[Account]
    absorbed: list[str]
    password: str


@st.composite
def populated_services(
    draw: st.DrawFn,
    storage_factory: Callable[[], Storage] = InMemoryStorage,
    max_families: int = 4,
) -> Population:
    """A service on a fresh store holding several families.

    Each family has one to three letters from one establishment; some
    families activated a principal, and some of those merged other letters
    into it.  The principals' password is ``Population.password``.
    """
    service = MergeService(storage_factory(), fast_verifier(), FakeClock())
    password = "Mot-de-passe-Sûr-2026"
    population = Population(service, [], [], [], password)
    for _ in range(draw(st.integers(1, max_families))):
        school = draw(establishments())
        parent = draw(responsable_identities())
        kids = draw(st.lists(children(school.uai), min_size=1, max_size=3,
                             unique_by=lambda c: c.id))
        letters = [service.issue_account(school, parent.display_name, [kid]) for kid in kids]
        population.letters.extend(letters)
        if draw(st.booleans()):
            principal = service.activate(letters[0].login, letters[0].provisional_password,
                                         password)
            population.principals.append(principal)
            for letter in letters[1:]:
                if draw(st.booleans()):
                    service.merge(principal.id, letter.login, letter.provisional_password)
                    population.absorbed.append(letter.account_id)
    return population
