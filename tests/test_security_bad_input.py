"""Bad input everywhere: every public method of MergeService, fed anything.

Hypothesis draws each argument from junk (arbitrary and huge text,
``None``, numbers, bytes, lists, objects of the wrong kind) mixed with
plausible values (known ids, logins, passwords), so that calls get past
the first checks too.  Whatever happens, only ``AccountMergeError``
subclasses come out, and a call that fails changes nothing: not the
accounts, credentials, children, receipts or events, and, when the input
itself is refused (``invalid_input``), not even the failure counters and
the audit trail.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from account_merge import Child, InMemoryStorage, MergeService, Role, Secret
from account_merge.domain.register import RegisterEntry
from account_merge.exceptions import AccountMergeError
from account_merge.ports import Storage
from account_merge.testing import (
    CapturingMailer,
    CountingVerifier,
    FakeClock,
    make_establishment,
)
from security_kit import InstrumentedStorage, changes, snapshot

#: change_email is deprecated, and fed junk here like every public method.
pytestmark = pytest.mark.filterwarnings("ignore:change_email:DeprecationWarning")

SCHOOL = make_establishment(860001, "Collège Jean Moulin")
UNKNOWN_SCHOOL = make_establishment(860099, "Collège Inconnu")
STRONG = "Mot-de-passe-Sûr-2026"

HUGE = st.builds(operator.mul, st.text(min_size=1, max_size=3), st.integers(65, 20_000))
JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=2**63),
    st.floats(allow_nan=True), st.binary(max_size=20), st.text(max_size=30), HUGE,
    st.sampled_from(["", " ", "\x00", "\ud800", "a\nb", "\u2028", "é" * 65, "-", "*", "%"]),
    st.lists(st.one_of(st.text(max_size=5), st.integers(), st.none()), max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.just(object()), st.just(Secret("x")), st.just(Role.ELEVE), st.just(UNKNOWN_SCHOOL),
    st.just(datetime(2026, 9, 1, tzinfo=UTC)), st.just(timedelta(days=1)),
    st.just(Child("ine-junk", "Junk", "Robert", UNKNOWN_SCHOOL.uai)),
)


class World:
    """A store with accounts in every state, and plausible values to call with."""

    def __init__(self, storage: Storage) -> None:
        self.store = InstrumentedStorage(storage)
        self.service = MergeService(
            self.store, CountingVerifier(), FakeClock(), secret_key="a test secret key here",
            links={"password_reset": "https://ent.example/mdp/{token}",
                   "email_verification": "https://ent.example/courriel/{token}"})
        letters = [self.service.issue_account(
            SCHOOL, f"Parent Numéro {n}", [Child(f"ine-{n}", "Enfant", "Robert", SCHOOL.uai)])
            for n in range(4)]
        principal = self.service.activate(letters[0].login, letters[0].provisional_password,
                                          STRONG)
        self.service.merge(principal.id, letters[1].login, letters[1].provisional_password,
                           "form-1")
        ids = [principal.id, letters[1].account_id, letters[2].account_id, "missing"]
        logins = [principal.login, letters[1].login, letters[2].login, "nobody.here"]
        passwords = [STRONG, letters[2].provisional_password,
                     letters[2].provisional_password.reveal(), "WRONG234"]
        self.ids = st.one_of(JUNK, st.sampled_from(ids))
        self.logins = st.one_of(JUNK, st.sampled_from(logins))
        self.passwords = st.one_of(JUNK, st.sampled_from(passwords))
        self.emails = st.one_of(JUNK, st.just("claire@example.org"))
        self.schools = st.one_of(JUNK, st.just(SCHOOL))
        self.names = st.one_of(JUNK, st.just("Claire Robert"))
        self.kids = st.one_of(JUNK, st.just([Child("ine-new", "Léa", "Robert", SCHOOL.uai)]))
        self.roles = st.one_of(JUNK, st.sampled_from(list(Role)))
        self.numbers = st.one_of(JUNK, st.integers(1, 10))
        self.keys = st.one_of(JUNK, st.just("form-1"), st.just("form-2"))
        # the way back
        self.identifiers = st.one_of(self.logins, self.emails)
        self.tokens = st.one_of(JUNK, st.just("MXIKMTc4.XDnvnw9n"))
        self.mailers = st.one_of(JUNK, st.builds(CapturingMailer))
        entries = st.builds(RegisterEntry, st.sampled_from(["R1", "R2"]),
                            st.just("Claire Robert"), st.just([Child("ine-0", "Enfant", "Robert",
                                                                      SCHOOL.uai)]))
        self.registers = st.one_of(JUNK, st.lists(st.one_of(entries, JUNK), max_size=3))

    def signatures(self) -> dict[str, list[st.SearchStrategy[Any]]]:
        """For each public method, a strategy per positional argument."""
        return {
            "issue_account": [self.schools, self.names, self.kids, self.roles],
            "issue_accounts": [self.schools, JUNK, self.roles],
            "activate": [self.logins, self.passwords, self.passwords, self.emails],
            "authenticate": [self.logins, self.passwords],
            "change_password": [self.ids, self.passwords, self.passwords],
            "change_email": [self.ids, self.emails],
            "merge": [self.ids, self.logins, self.passwords, self.keys],
            "split": [self.schools, self.ids],
            "get_account": [self.ids],
            "find_account": [self.logins],
            "resolve": [self.ids],
            "children": [self.ids],
            "attached_children": [self.ids],
            "unpublished_events": [self.numbers],
            "mark_published": [st.one_of(JUNK, st.lists(st.integers(), max_size=3))],
            "audit_trail": [self.ids, self.numbers],
            "sync_register": [self.schools, self.registers],
            "register_establishment": [self.schools],
            "find_establishment": [st.one_of(JUNK, st.just(SCHOOL.uai))],
            # the way back
            "request_password_reset": [self.identifiers],
            "reset_password": [self.tokens, self.passwords],
            "request_login_reminder": [self.emails],
            "request_email_change": [self.ids, self.passwords, self.emails],
            "confirm_email": [self.tokens],
            "reissue_letter": [self.schools, self.ids],
            "deliver_notices": [self.mailers, self.numbers],
            # retention
            "purge": [],
            "export_personal_data": [self.ids],
        }

    def arguments(self, method: str) -> st.SearchStrategy[tuple[tuple[Any, ...], dict[str, Any]]]:
        """Positional and keyword arguments for *method*."""
        keywords: dict[str, dict[str, st.SearchStrategy[Any]]] = {
            "issue_account": {"email": self.emails},
            "issue_accounts": {"workers": st.one_of(JUNK, st.just(1))},
            "sync_register": {"dry_run": st.one_of(JUNK, st.booleans()),
                              "partial": st.one_of(JUNK, st.booleans()),
                              "workers": st.one_of(JUNK, st.just(1))},
            "register_establishment": {"actor": st.one_of(JUNK, st.just("cli"))},
            "request_password_reset": {"client": st.one_of(JUNK, st.just("203.0.113.7"))},
            "reset_password": {"client": st.one_of(JUNK, st.just("203.0.113.7"))},
            "deliver_notices": {"language": st.one_of(JUNK, st.just("en"))},
            "purge": {"dry_run": st.one_of(JUNK, st.booleans()),
                      "progress": st.one_of(JUNK, st.just(lambda done: None))},
        }
        positional = st.tuples(*self.signatures()[method])
        named = st.fixed_dictionaries({}, optional=keywords.get(method, {}))
        return st.tuples(positional, named)

    def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> object:
        result = getattr(self.service, method)(*args, **kwargs)
        if method == "issue_accounts":
            result = list(result)  # type: ignore[call-overload]
        return result


PUBLIC = sorted(name for name in vars(MergeService)
                if not name.startswith("_") and callable(getattr(MergeService, name)))


def test_every_public_method_is_fed() -> None:
    assert set(World(InMemoryStorage()).signatures()) == set(PUBLIC)


@pytest.mark.parametrize("method", PUBLIC)
def test_only_library_errors_come_out_and_a_failed_call_changes_nothing(
        make_storage: Callable[[], Storage], method: str) -> None:
    world = World(make_storage())

    @settings(max_examples=30, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(arguments=world.arguments(method))
    def check(arguments: tuple[tuple[Any, ...], dict[str, Any]]) -> None:
        args, kwargs = arguments
        before = snapshot(world.store)
        try:
            world.call(method, args, kwargs)
        except AccountMergeError as error:
            after = snapshot(world.store)
            if error.code == "invalid_input":
                assert changes(before, after) == {}, error
            else:
                assert changes({k: v for k, v in before.items() if k[0] not in _COUNTED},
                               {k: v for k, v in after.items() if k[0] not in _COUNTED}) == {}
        # Anything else propagates and fails the test.

    check()


#: What a failed attempt writes on purpose: the failure counters and the audit trail.
_COUNTED = {"throttle", "audit"}


@pytest.mark.parametrize("options", [
    {"storage": None}, {"storage": "store.sqlite3"}, {"verifier": "argon2"},
    {"verifier": object()}, {"clock": "now"}, {"clock": datetime(2026, 9, 1, tzinfo=UTC)},
    {"password_policy": "cnil"}, {"throttle": {"lock_after": 3}}, {"identity_rule": True},
    {"provisional_validity": 90}, {"provisional_validity": timedelta(0)},
    {"provisional_length": "8"}, {"provisional_length": 2**70},
    {"secret_key": "short"}, {"secret_key": 42}, {"links": "https://ent.example/{token}"},
    {"links": {"password_reset": "https://ent.example/"}},
])
def test_a_service_built_with_bad_options_is_refused(options: dict[str, Any]) -> None:
    arguments: dict[str, Any] = {"storage": InMemoryStorage(), **options}
    with pytest.raises(AccountMergeError) as raised:
        MergeService(**arguments)
    assert raised.value.code == "invalid_input"
