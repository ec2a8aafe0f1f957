"""A Hypothesis state machine that checks the service against a plain model.

It issues, activates, authenticates, merges (with right, wrong, stale and
expired credentials, pupils' accounts, self-merges and chains of merges)
and splits, on any storage, and after every step compares the store with
the model and checks the design's invariants I1-I5 and I7.  A split must
give each origin letter's children to a new account of their own, named
after that letter's responsable: no new account ever holds children of
two origins.  Time passes (up to a year at a step) and the retention
policy's purge runs, dry or not: it must delete exactly the accounts the
policy makes due (closed ones 90 days after the register closed them),
with the accounts they absorbed, keep those holding a child their register
entries list that no account not due holds, and no live account may lose a child;
a deleted account's login and passwords open nothing, and its register
entries go with it (listed again, the responsable is new).

On a store with the ``register`` tier it also syncs each establishment's
register (whole or partial, with names corrected, children added and
removed, responsables gone and back), and checks after each sync: every
child an entry lists is on the live account holding that entry's letter;
a whole register leaves no child it does not list on a responsable's
account, and loses none it lists (a partial one changes only the children
of the responsables it lists); the same register again changes nothing;
other establishments' letters and pupils' own accounts are untouched.  At
every step, a child is on at most one live account per letter.

>>> from account_merge import InMemoryStorage
>>> Machine = build_state_machine(InMemoryStorage)
>>> Machine.__name__
'MergeStateMachine'

Run it with ``run_state_machine_as_test(Machine)`` or expose
``Machine.TestCase`` to pytest.

This module is longer than 500 lines because the machine is one class, built
in a closure over the store factory, whose rules and invariants all read and
write the same model and bookkeeping, so moving some of them elsewhere would
mean mixin classes typed against that shared state: a rewrite, not a move.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import attrs
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    precondition,
    rule,
)

from account_merge.domain.account import AccountStatus, Role
from account_merge.domain.child import Child
from account_merge.domain.establishment import Establishment
from account_merge.domain.register import RegisterEntry, SyncReport
from account_merge.domain.throttle import ThrottlePolicy
from account_merge.exceptions import AccountMergeError
from account_merge.ports import Storage
from account_merge.ports.register import Register
from account_merge.ports.tiers import supports
from account_merge.service import MergeService
from account_merge.testing import CountingVerifier, FakeClock, make_establishment

__all__ = ["build_state_machine"]

_ESTABLISHMENTS = (make_establishment(860001, "Collège Jean Moulin"),
                   make_establishment(860002, "Lycée Camille Guérin"))
_CHILDREN = tuple(
    Child(f"ine-{i}", name, "Robert", _ESTABLISHMENTS[i // 3].uai)
    for i, name in enumerate(["Dylan", "Florian", "Léa", "Inès", "Tom", "Zoé"])
)
#: The responsables a register may list, per establishment: (external id, names it may give).
_RESPONSABLES = (("R0", ("Claire Robert", "Claire Durand")), ("R1", ("Marc Robert",)),
                 ("R2", ("Paul Martin",)))
#: A register: for some responsables, (which of their names, which of the school's children).
_REGISTERS = st.dictionaries(st.integers(0, len(_RESPONSABLES) - 1),
                             st.tuples(st.integers(0, 1),
                                       st.lists(st.integers(0, 2), min_size=1, max_size=3,
                                                unique=True)),
                             max_size=len(_RESPONSABLES))
_NO_THROTTLE = ThrottlePolicy(backoff_after=10**6, lock_after=10**6,
                              principal_per_hour=10**6, principal_per_day=10**6)


@attrs.define
class _Model:
    id: str
    login: str
    role: Role
    display_name: str
    status: AccountStatus = AccountStatus.PROVISIONAL
    merged_into: str | None = None
    # child id -> (joined via merge, the account whose letter first carried it)
    children: dict[str, tuple[bool, str]] = attrs.Factory(dict)
    provisional: str = ""
    password: str | None = None
    expires_at: Any = None
    #: what the account was when it was absorbed (its credential then)
    absorbed_from: AccountStatus | None = None
    #: the last sign-in (or the activation)
    last_sign_in: Any = None
    #: when the register closed it (None while it is not closed)
    closed_at: Any = None


def build_state_machine(
    storage_factory: Callable[[], Storage],
    *,
    close: Callable[[Storage], None] | None = None,
) -> type[RuleBasedStateMachine]:
    """A state machine class running on stores made by *storage_factory*.

    Each Hypothesis example gets a fresh store; *close* (default:
    ``storage.close()``) releases it at the end of the example.
    """

    class MergeStateMachine(RuleBasedStateMachine):
        accounts = Bundle("accounts")
        principals = Bundle("principals")  # accounts that were activated

        def __init__(self) -> None:
            super().__init__()
            self.storage = storage_factory()
            self.clock = FakeClock()
            self.verifier = CountingVerifier()
            self.service = MergeService(self.storage, self.verifier, self.clock,
                                        throttle=_NO_THROTTLE)
            self.model: dict[str, _Model] = {}
            self.known_establishments: set[str] = set()
            self.issued_children: set[str] = set()
            self.passwords = 0
            with self.storage.unit_of_work(write=False) as uow:
                self.has_register = supports(uow, Register)
            # per establishment: external id -> the children its register lists now
            self.register: dict[str, dict[str, set[str]]] = {}
            # (establishment, external id) -> the account issued (or adopted) for the entry
            self.entry_account: dict[tuple[str, str], str] = {}
            #: accounts a purge deleted
            self.purged: dict[str, _Model] = {}

        def teardown(self) -> None:
            (close or (lambda s: s.close()))(self.storage)

        # -- helpers ---------------------------------------------------------
        def snapshot(self) -> dict[str, Any]:
            out = {}
            for account_id in self.model:
                account = self.service.get_account(account_id)
                out[account_id] = (account, self.service.children(account_id))
            return out

        def expect_failure(self, code: str, call: Callable[[], object], *,
                           credential_failure: bool = False) -> None:
            before = self.snapshot()
            self.verifier.reset()
            try:
                call()
            except AccountMergeError as error:
                assert error.code == code, f"expected {code}, got {error.code}: {error}"
            else:
                raise AssertionError(f"expected {code}, the call succeeded")
            if credential_failure:
                # I7: one verification whatever the reason.
                assert self.verifier.verifications == 1, self.verifier.verifications
            # I5: a failed operation changes nothing.
            assert self.snapshot() == before

        def new_password(self) -> str:
            self.passwords += 1
            return f"Mot-de-passe-{self.passwords}-Sûr"

        def gone(self, *account_ids: str) -> bool:
            """True if a purge deleted one of these accounts."""
            return any(account_id in self.purged for account_id in account_ids)

        def live(self, account_id: str) -> _Model:
            model = self.model[account_id]
            return self.model[model.merged_into] if model.merged_into else model

        def usable(self, target: _Model, password: str) -> bool:
            """True if *password* opens *target* for a merge or an activation."""
            return (target.status is not AccountStatus.MERGED
                    and self.opens(target.status, target, password))

        def opens(self, status: AccountStatus, target: _Model, password: str) -> bool:
            """True if *password* is the credential an account in *status* holds."""
            now = self.clock()
            if status is AccountStatus.CLOSED:
                return False  # closed by the register: opens nothing
            if status is AccountStatus.PROVISIONAL:
                return password == target.provisional and now < target.expires_at
            if status is AccountStatus.ACTIVE:
                return password == target.password
            assert target.absorbed_from is not None  # MERGED: the credential it had then
            return self.opens(target.absorbed_from, target, password)

        def password_for(self, target: _Model, mode: str) -> str:
            if mode == "right":
                if target.status is AccountStatus.ACTIVE and target.password is not None:
                    return target.password
                return target.provisional
            if mode == "stale":  # the letter's password, whatever happened since
                return target.provisional
            return "WRONGPW9"

        def add_issued(self, letter: Any, role: Role, kids: list[Child]) -> str:
            self.model[letter.account_id] = _Model(
                id=letter.account_id, login=letter.login, role=role,
                display_name=letter.display_name,
                children={c.id: (False, letter.account_id) for c in kids},
                provisional=letter.provisional_password.reveal(),
                expires_at=letter.expires_at,
            )
            self.known_establishments.add(letter.establishment.uai)
            self.issued_children.update(c.id for c in kids)
            return str(letter.account_id)

        # -- rules -------------------------------------------------------------
        @rule(target=accounts, school=st.sampled_from(_ESTABLISHMENTS),
              picks=st.lists(st.integers(0, 2), min_size=1, max_size=3, unique=True),
              name=st.sampled_from(["Claire Robert", "Marc Robert"]))
        def issue_responsable(self, school: Establishment, picks: list[int],
                              name: str) -> str:
            return self.issue_letter(school, picks, name)

        def issue_letter(self, school: Establishment, picks: list[int], name: str) -> str:
            offset = 0 if school is _ESTABLISHMENTS[0] else 3
            kids = [_CHILDREN[offset + i] for i in picks]
            letter = self.service.issue_account(school, name, kids)
            return self.add_issued(letter, Role.RESPONSABLE, kids)

        @rule(target=principals, school=st.sampled_from(_ESTABLISHMENTS),
              picks=st.lists(st.integers(0, 2), min_size=1, max_size=3, unique=True))
        def issue_and_activate_a_principal(self, school: Establishment, picks: list[int]) -> str:
            return self.new_principal(school, picks)

        def new_principal(self, school: Establishment, picks: list[int]) -> str:
            account = self.issue_letter(school, picks, "Claire Robert")
            target = self.model[account]
            new = self.new_password()
            self.service.activate(target.login, target.provisional, new)
            target.status, target.password = AccountStatus.ACTIVE, new
            target.last_sign_in = self.clock()
            return account

        @rule(target=principals,
              college_picks=st.lists(st.integers(0, 2), min_size=2, max_size=3, unique=True),
              lycee_picks=st.lists(st.integers(0, 2), min_size=1, max_size=3, unique=True))
        def gather_a_family_across_establishments(self, college_picks: list[int],
                                                  lycee_picks: list[int]) -> str:
            """A principal holding, through merges, children of both establishments.

            The case where a split must take only its own establishment's
            children (I3), which random steps alone reach seldom.
            """
            college, lycee = _ESTABLISHMENTS
            principal = self.new_principal(college, college_picks[:1])
            for school, picks in ((college, college_picks[1:]), (lycee, lycee_picks)):
                absorbed = self.issue_letter(school, picks, "Claire Robert")
                self.merge(principal, absorbed, "right")
            return principal

        @rule(principal=principals, school=st.sampled_from(_ESTABLISHMENTS),
              picks=st.lists(st.integers(0, 2), min_size=1, max_size=3, unique=True),
              name=st.sampled_from(["Claire Robert", "Marc Robert"]))
        def issue_a_letter_and_merge_it(self, principal: str, school: Establishment,
                                        picks: list[int], name: str) -> None:
            """The common path: a parent merges a new letter as soon as it arrives.

            The letter may name another responsable (the other parent's), so
            that splits meet children of several origins.
            """
            account = self.issue_letter(school, picks, name)
            self.merge(principal, account, "right")

        @rule(target=accounts, index=st.integers(0, 5))
        def issue_pupil(self, index: int) -> str:
            kid = _CHILDREN[index]
            school = _ESTABLISHMENTS[index // 3]
            letter = self.service.issue_account(school, kid.first_name, [kid], Role.ELEVE)
            return self.add_issued(letter, Role.ELEVE, [kid])

        @rule(target=principals, account=accounts,
              mode=st.sampled_from(["right", "right", "right", "wrong"]))
        def activate(self, account: str, mode: str) -> Any:
            if self.gone(account):
                return multiple()
            target = self.model[account]
            provisional = target.provisional if mode == "right" else "WRONGPW9"
            new = self.new_password()
            if target.status is AccountStatus.PROVISIONAL and self.usable(target, provisional):
                result = self.service.activate(target.login, provisional, new)
                assert result.status is AccountStatus.ACTIVE
                target.status = AccountStatus.ACTIVE
                target.password = new
                target.last_sign_in = self.clock()
                return account
            self.expect_failure("invalid_credentials",
                                lambda: self.service.activate(target.login, provisional, new),
                                credential_failure=True)
            return multiple()

        @rule(account=accounts, mode=st.sampled_from(["right", "wrong", "stale"]))
        def authenticate(self, account: str, mode: str) -> None:
            if self.gone(account):
                self.authenticate_a_purged_account(self.purged[account], mode)
                return
            target = self.model[account]
            password = self.password_for(target, mode)

            def call() -> object:
                return self.service.authenticate(target.login, password)

            if not self.opens(target.status, target, password):
                self.expect_failure("invalid_credentials", call, credential_failure=True)
            elif target.status is AccountStatus.ACTIVE:
                assert self.service.authenticate(target.login, password).id == account
                target.last_sign_in = self.clock()
            elif target.status is AccountStatus.PROVISIONAL:
                # Proven, so telling it reveals nothing: the letter must be activated.
                self.expect_failure("activation_required", call, credential_failure=True)
            else:
                self.expect_failure("account_merged", call, credential_failure=True)

        @rule(principal=principals, absorbed=accounts,
              mode=st.sampled_from(["right", "right", "right", "wrong", "stale"]))
        def merge_into_an_activated_account(self, principal: str, absorbed: str,
                                            mode: str) -> None:
            self.merge(principal, absorbed, mode)

        @rule(principal=principals, absorbed=principals,
              mode=st.sampled_from(["right", "right", "wrong", "stale"]))
        def merge_two_activated_accounts(self, principal: str, absorbed: str, mode: str) -> None:
            self.merge(principal, absorbed, mode)

        @rule(principal=accounts, absorbed=accounts,
              mode=st.sampled_from(["right", "wrong", "stale"]))
        def merge_any(self, principal: str, absorbed: str, mode: str) -> None:
            self.merge(principal, absorbed, mode)

        def authenticate_a_purged_account(self, target: _Model, mode: str) -> None:
            """A deleted account's login and passwords open nothing (its login may be
            another account's since)."""
            if any(m.login == target.login for m in self.model.values()):
                return
            password = (target.password or target.provisional) if mode == "right" else "WRONGPW9"
            self.expect_failure("invalid_credentials",
                                lambda: self.service.authenticate(target.login, password),
                                credential_failure=True)

        def merge(self, principal: str, absorbed: str, mode: str) -> None:
            if self.gone(principal, absorbed):
                return
            p, a = self.model[principal], self.model[absorbed]
            password = self.password_for(a, mode)

            def call() -> object:
                return self.service.merge(principal, a.login, password)

            if p.status is not AccountStatus.ACTIVE:
                self.expect_failure("principal_not_active", call)
            elif p.role is not Role.RESPONSABLE:
                self.expect_failure("not_responsable", call)
            elif not self.usable(a, password):
                self.expect_failure("invalid_credentials", call, credential_failure=True)
            elif a.id == p.id:
                self.expect_failure("same_account", call)
            elif a.role is not Role.RESPONSABLE:
                self.expect_failure("not_responsable", call)
            else:
                receipt = self.service.merge(principal, a.login, password)
                moved = [c for c in a.children if c not in p.children]
                for child_id in moved:
                    p.children[child_id] = (True, a.children[child_id][1])
                assert [c.id for c in receipt.moved] == moved
                a.children = {}
                a.absorbed_from = a.status
                a.status, a.merged_into = AccountStatus.MERGED, p.id
                for other in self.model.values():
                    if other.merged_into == a.id:
                        other.merged_into = p.id
                assert [c.id for c in receipt.children] == list(p.children)

        @rule(target=accounts, school=st.sampled_from(_ESTABLISHMENTS), account=principals)
        def split(self, school: Establishment, account: str) -> Any:
            if self.gone(account):
                return multiple()
            live = self.live(account)

            def call() -> Any:
                return self.service.split(school, account)

            own = {c: kept for c, kept in live.children.items()
                   if _CHILDREN[int(c.split("-")[1])].establishment_uai == school.uai}
            if (school.uai not in self.known_establishments or live.role is not Role.RESPONSABLE
                    or not own):
                self.expect_failure("not_authorized", call)
                return multiple()
            moved = [c for c, (via, _) in own.items() if via]
            if not moved:
                self.expect_failure("nothing_to_split", call)
                return multiple()
            origins: dict[str, list[str]] = {}
            for child_id in moved:
                origins.setdefault(live.children[child_id][1], []).append(child_id)
            receipt = call()
            assert receipt.principal_id == live.id
            assert [c.id for c in receipt.moved] == moved
            # I3: only the establishment's own children move.
            assert all(c.establishment_uai == school.uai for c in receipt.moved)
            letters = {live.id, *(m.id for m in self.model.values() if m.merged_into == live.id)}
            held = self.service.attached_children(live.id)
            # A letter split off takes every child its register entry lists that the account
            # holds (some through another letter): the new account holds all its children.
            extra = {origin: sorted(
                c for (uai, ext), account in self.entry_account.items()
                if account == origin and uai == school.uai
                for c in self.register.get(uai, {}).get(ext, set())
                if c in live.children and c not in kids) for origin, kids in origins.items()}
            for child_id in moved:
                # Another letter the account holds lists the child in a register: it stays,
                # credited to that letter; otherwise it leaves.
                listing = {account for (uai, ext), account in self.entry_account.items()
                           if account in letters
                           and account != live.children[child_id][1]
                           and child_id in self.register.get(uai, {}).get(ext, set())}
                if listing:
                    now = next((a for a in held if a.child.id == child_id), None)
                    assert now is not None and now.origin_account_id in listing, (
                        child_id, listing)
                    live.children[child_id] = (now.via_merge, now.origin_account_id)
                else:
                    del live.children[child_id]
            # One new account per origin letter, named after its responsable, in link
            # order: no new account holds children of two origins.
            assert len(receipt.letters) == len(origins)
            new_ids = []
            for letter, (origin, kids) in zip(receipt.letters, origins.items(), strict=True):
                for key, account_id in list(self.entry_account.items()):
                    if account_id == origin and key[0] == school.uai:
                        self.entry_account[key] = letter.account_id
                assert [c.id for c in letter.children] == kids + extra[origin]
                assert letter.display_name == self.model[origin].display_name
                new = self.service.get_account(letter.account_id)
                assert new.status is AccountStatus.PROVISIONAL
                new_ids.append(self.add_issued(letter, Role.RESPONSABLE, list(letter.children)))
            return multiple(*new_ids)

        # -- the school's register ---------------------------------------------------
        def held_by_responsables(self, uai: str) -> dict[str, set[str]]:
            """Child id -> the live responsable accounts holding it, for *uai*'s children."""
            out: dict[str, set[str]] = {}
            for m in self.model.values():
                if m.role is Role.RESPONSABLE and m.status is not AccountStatus.MERGED:
                    for child_id in m.children:
                        if _CHILDREN[int(child_id.split("-")[1])].establishment_uai == uai:
                            out.setdefault(child_id, set()).add(m.id)
            return out

        def entries(self, school: Establishment, listing: dict[int, tuple[int, list[int]]]
                    ) -> list[RegisterEntry]:
            offset = 0 if school is _ESTABLISHMENTS[0] else 3
            return [RegisterEntry(_RESPONSABLES[r][0], _RESPONSABLES[r][1][
                        min(name, len(_RESPONSABLES[r][1]) - 1)],
                                  [_CHILDREN[offset + i] for i in picks])
                    for r, (name, picks) in sorted(listing.items())]

        @precondition(lambda self: self.has_register)
        @rule(target=accounts, school=st.sampled_from(_ESTABLISHMENTS), listing=_REGISTERS,
              partial=st.sampled_from([False, False, True]))
        def sync_the_register(self, school: Establishment,
                              listing: dict[int, tuple[int, list[int]]], partial: bool) -> Any:
            """The school syncs its register: the model learns the outcome, then checks it."""
            entries = self.entries(school, listing)
            uai = school.uai
            before_held = self.held_by_responsables(uai)
            before = {a: (m.status, dict(m.children)) for a, m in self.model.items()}
            state = self.register.setdefault(uai, {})
            touched = set()
            for e in entries:
                touched |= state.get(e.external_id, set())
            report: SyncReport = self.service.sync_register(school, entries, partial=partial,
                                                            workers=1)
            if not partial:
                state.clear()
            for e in entries:
                state[e.external_id] = {c.id for c in e.children}
                touched |= state[e.external_id]
            for external_id, account_id in report.adopted:
                self.entry_account[(uai, external_id)] = account_id
                # an adopted letter is the entry's now: its children are the entry's to keep
                touched |= {child for _, held in before.values()
                            for child, (_, origin) in held.items() if origin == account_id}
            new_ids = []
            for issued in report.issued:
                assert issued.letter is not None
                self.entry_account[(uai, issued.external_id)] = issued.letter.account_id
                new_ids.append(self.add_issued(issued.letter, Role.RESPONSABLE,
                                               list(issued.children)))
            self.known_establishments.add(uai)
            for account_id, m in self.model.items():  # learn what the sync did
                account = self.service.get_account(account_id)
                assert account.merged_into == m.merged_into  # a sync never merges
                if account.status is AccountStatus.CLOSED and m.status is not account.status:
                    m.closed_at = self.clock()
                elif account.status is not AccountStatus.CLOSED:
                    m.closed_at = None
                m.status = account.status
                m.display_name = account.display_name  # as the register names them
                m.children = {a.child.id: (a.via_merge, a.origin_account_id)
                              for a in self.service.attached_children(account_id)}
            # Every child an entry lists is on the live account holding its letter.
            for external_id, kids in state.items():
                if kids:
                    holder = self.live(self.entry_account[(uai, external_id)])
                    assert holder.status in (AccountStatus.ACTIVE, AccountStatus.PROVISIONAL)
                    assert kids <= set(holder.children), (external_id, kids, holder.children)
            listed = set().union(*state.values()) if state else set()
            held = self.held_by_responsables(uai)
            if partial:  # nobody leaves but for the responsables it lists
                for child_id in set(before_held) | set(held):
                    if child_id not in touched:
                        assert bool(held.get(child_id)) == bool(before_held.get(child_id))
            else:  # no enrolled child lost, no child it does not list kept
                assert set(held) == listed, (held, listed)
            for account_id, m in self.model.items():
                old = before.get(account_id)
                if old is None:
                    continue
                if m.role is Role.ELEVE:  # pupils' own accounts are not the register's
                    assert (m.status, m.children) == old
                kept = {c: v for c, v in old[1].items()
                        if _CHILDREN[int(c.split("-")[1])].establishment_uai != uai}
                assert {c: v for c, v in m.children.items() if c in kept} == kept
                if m.status is AccountStatus.CLOSED:
                    assert not m.children
            # A closed account opens nothing, with the right password too (I7: same work).
            for closed in report.closed:
                target = self.model[closed.account_id]
                self.expect_failure("invalid_credentials", functools.partial(
                    self.service.authenticate, target.login,
                    self.password_for(target, "right")), credential_failure=True)
            # The same register again changes nothing.
            again = self.service.sync_register(school, entries, partial=partial,
                                               dry_run=True)
            assert not again.changed, again
            self.issued_children = set().union(*(
                set(m.children) for m in self.model.values()
                if m.status is not AccountStatus.MERGED))
            return multiple(*new_ids)

        @precondition(lambda self: self.has_register)
        @rule(target=principals, school=st.sampled_from(_ESTABLISHMENTS),
              shared=st.lists(st.integers(0, 2), min_size=1, max_size=2, unique=True),
              own=st.integers(0, 2), others=st.integers(0, 2))
        def parents_merge_their_letters(self, school: Establishment, shared: list[int],
                                        own: int, others: int) -> Any:
            """Two parents listed for the same children; one merges the other's letter.

            The case where a child is on the account through one letter and
            listed by another (which splits and syncs must both respect),
            which random steps alone reach seldom.
            """
            listing = {0: (0, sorted({*shared, own})), 1: (0, sorted({*shared, others}))}
            self.sync_the_register(school=school, listing=listing, partial=True)
            claire = self.live(self.entry_account[(school.uai, "R0")])
            marc = self.model[self.entry_account[(school.uai, "R1")]]
            if claire.status is AccountStatus.PROVISIONAL and self.usable(claire,
                                                                           claire.provisional):
                password = self.new_password()
                self.service.activate(claire.login, claire.provisional, password)
                claire.status, claire.password = AccountStatus.ACTIVE, password
                claire.last_sign_in = self.clock()
            if (claire.status is not AccountStatus.ACTIVE or marc.merged_into is not None
                    or marc.id == claire.id):
                return multiple()
            self.merge(claire.id, marc.id, "right")
            return claire.id

        @rule(days=st.sampled_from([1, 7, 30, 89, 91, 366]))
        def time_passes(self, days: int) -> None:
            self.clock.advance(timedelta(days=days))

        def enrolled(self, m: _Model) -> set[str]:
            """The children the register entries of *m*'s letters (its own, those it
            absorbed) list now."""
            letters = {m.id, *(a.id for a in self.model.values() if a.merged_into == m.id)}
            return {c for (uai, ext), account in self.entry_account.items() if account in letters
                    for c in self.register.get(uai, {}).get(ext, set())}

        def expected_purge(self) -> tuple[set[str], set[str]]:
            """The accounts a purge deletes, with those they absorbed, and the due ones it
            keeps for an enrolled child.

            Due: a letter never activated once it expired (90 days after its issue:
            the default policy), an ACTIVE account a year after its last sign-in, an
            account the register closed 90 days after its closure.  A due account
            holding a child its letters' entries list that no account not due holds
            is kept: taking a child away is the register's job.
            """
            now = self.clock()
            due = {m.id for m in self.model.values()
                   if (m.status is AccountStatus.PROVISIONAL and m.expires_at <= now)
                   or (m.status is AccountStatus.ACTIVE and m.last_sign_in is not None
                       and m.last_sign_in <= now - timedelta(days=365))
                   or (m.status is AccountStatus.CLOSED and m.closed_at is not None
                       and m.closed_at <= now - timedelta(days=90))}
            held = {c for m in self.model.values()
                    if m.role is Role.RESPONSABLE and m.status is not AccountStatus.MERGED
                    and m.id not in due for c in m.children}
            kept = {i for i in due
                    if (set(self.model[i].children) & self.enrolled(self.model[i])) - held}
            deleted = due - kept
            return deleted | {m.id for m in self.model.values()
                              if m.merged_into in deleted}, kept

        @rule(dry_run=st.booleans())
        def purge(self, dry_run: bool) -> None:
            """The retention policy's purge deletes exactly the accounts it says
            (:meth:`expected_purge`), and no live account loses a child."""
            expected, kept = self.expected_purge()
            before = self.snapshot()
            report = self.service.purge(dry_run=dry_run)
            assert set(report.account_ids) == expected, (report, expected)
            assert len(report.account_ids) == report.accounts == len(expected)
            assert report.kept_for_children == len(kept), (report, kept)
            if dry_run:
                assert self.snapshot() == before
                return
            for account_id in expected:
                self.purged[account_id] = self.model.pop(account_id)
                with contextlib.suppress(AccountMergeError):
                    self.service.get_account(account_id)
                    raise AssertionError(f"{account_id} was purged but is still there")
            # Their register entries went with them: listed again, they are new entries.
            for (uai, external_id), account_id in list(self.entry_account.items()):
                if account_id in expected:
                    del self.entry_account[(uai, external_id)]
                    self.register.get(uai, {}).pop(external_id, None)
            # Only the children of deleted accounts that no live account holds are gone.
            held = {c for m in self.model.values() if m.status is not AccountStatus.MERGED
                    for c in m.children}
            lost = {c for i in expected for c in self.purged[i].children} - held
            assert self.issued_children - lost == held
            self.issued_children -= lost
            # No child an entry lists lost by the purge.
            listed = {c for entries in self.register.values() for kids in entries.values()
                      for c in kids}
            assert not listed & lost, (listed, lost)

        # -- invariants ----------------------------------------------------------
        @invariant()
        def store_matches_model(self) -> None:
            for account_id, m in self.model.items():
                account = self.service.get_account(account_id)
                assert account.status is m.status, (account_id, account.status, m.status)
                assert account.merged_into == m.merged_into
                assert account.role is m.role
                links = self.service.attached_children(account_id)
                assert [a.child.id for a in links] == list(m.children), (links, m.children)
                assert [(a.via_merge, a.origin_account_id) for a in links] == list(
                    m.children.values())

        @invariant()
        def merged_accounts_are_responsables_one_hop_from_a_live_one(self) -> None:
            for m in self.model.values():
                if m.status is AccountStatus.MERGED:
                    # I1 and I2
                    assert m.role is Role.RESPONSABLE
                    assert m.merged_into is not None
                    holder = self.model[m.merged_into]
                    # ACTIVE, or closed since by the register (it merged, so it was ACTIVE)
                    assert holder.status in (AccountStatus.ACTIVE, AccountStatus.CLOSED)
                    assert holder.role is Role.RESPONSABLE
                    assert self.service.resolve(m.id).id == holder.id

        @invariant()
        def every_listed_child_is_on_the_account_holding_its_letter(self) -> None:
            """Through merges and splits too: a split leaves a child another letter lists."""
            for uai, entries in self.register.items():
                for external_id, kids in entries.items():
                    if kids:
                        holder = self.live(self.entry_account[(uai, external_id)])
                        assert kids <= set(holder.children), (external_id, kids, holder)

        @invariant()
        def a_child_is_on_one_live_account_per_letter(self) -> None:
            seen: dict[tuple[str, str], str] = {}
            for m in self.model.values():
                if m.status is AccountStatus.MERGED:
                    continue
                for child_id, (_, origin) in m.children.items():
                    other = seen.setdefault((origin, child_id), m.id)
                    assert other == m.id, (child_id, origin, other, m.id)

        @invariant()
        def no_child_is_lost(self) -> None:
            held: set[str] = set()
            for m in self.model.values():
                if m.status is not AccountStatus.MERGED:
                    held.update(m.children)
                else:
                    assert not m.children
            assert held == self.issued_children  # I4

    return MergeStateMachine
