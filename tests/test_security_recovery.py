"""The way back, attacked: uniform answers, single-use tokens, forged links, secrets, throttling.

- A reset or reminder request does the same storage work, with change
  sets of the same shape, whether the login or address belongs to an
  account that may be reset, to another account, or to nobody (OWASP
  Forgot Password Cheat Sheet; ASVS 5.0 6.3.8).  The time each branch
  takes is measured by ``benchmarks/timing_recovery.py`` (printed, not
  asserted).
- Any token works at most once and never after a change of password
  (Hypothesis, any sequence of requests, resets, changes and waits).
- Forged, truncated, reused, expired or misdirected tokens are the one
  ``invalid_token``, and change nothing.
- Tokens and the new passwords appear nowhere: logs at DEBUG, reprs,
  events, audit records, stored rows, the bytes of an SQLite file.
- Requests are limited per login or address and per client; failed
  resets are slowed down per client.
"""

from __future__ import annotations

import functools
import logging
import string
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from account_merge import Child, InMemoryStorage, MergeService
from account_merge.domain.audit import AuditAction
from account_merge.domain.events import LoginReminderRequested, PasswordResetRequested
from account_merge.domain.notices import Notice, NoticeKind
from account_merge.domain.recovery import email_key
from account_merge.domain.throttle import ThrottlePolicy
from account_merge.domain.tokens import TokenClaims, TokenPurpose, TokenSigner
from account_merge.exceptions import AccountMergeError
from account_merge.ports import ChangeSet, Fetch, Storage
from account_merge.service import notices, recovery
from account_merge.service.context import Context
from account_merge.testing import CapturingMailer, CountingVerifier, FakeClock, make_establishment
from security_kit import InstrumentedStorage, changes, race, snapshot
from test_security_secrets import Exposure, assert_nowhere

SCHOOL = make_establishment(860001, "Collège Jean Moulin")
KEY = "a test secret key of the host"
LINKS = {"password_reset": "https://ent.example/mot-de-passe/{token}",
         "email_verification": "https://ent.example/courriel/{token}"}
STRONG = "Mot-de-passe-Sûr-2026"
OTHER = "Autre-Mot-de-passe-2027"
NEWER = "Tournesol-Bleu-Vif-2028"
#: No limit on requests, for tests about something else.
UNLIMITED = ThrottlePolicy(recovery_per_hour=10**6, recovery_client_per_hour=10**6,
                           backoff_after=10**6)


class World:
    """Accounts in every state a recovery request can meet, on one instrumented store."""

    def __init__(self, storage: Storage, *, throttle: ThrottlePolicy = UNLIMITED) -> None:
        self.store = InstrumentedStorage(storage)
        self.clock = FakeClock()
        self.service = MergeService(self.store, CountingVerifier(), self.clock, secret_key=KEY,
                                    links=LINKS, throttle=throttle)
        self.mailer = CapturingMailer()
        self.count = 0

    def letter(self, email: str | None = None) -> Any:
        self.count += 1
        child = Child(f"ine-{self.count}", "Enfant", "Robert", SCHOOL.uai)
        return self.service.issue_account(SCHOOL, f"Parent Numéro {self.count}", [child],
                                          email=email)

    def active(self, email: str | None = None, password: str = STRONG) -> Any:
        letter = self.letter()
        account = self.service.activate(letter.login, letter.provisional_password, password,
                                        email=email)
        if email is not None:
            self.service.deliver_notices(self.mailer)
            self.service.confirm_email(self.token(NoticeKind.EMAIL_VERIFICATION))
        return self.service.get_account(account.id)

    def token(self, kind: NoticeKind = NoticeKind.PASSWORD_RESET) -> str:
        url = self.mailer.last(kind).url
        assert url is not None
        return url.rsplit("/", 1)[1]


@pytest.fixture
def world(storage: Storage) -> World:
    return World(storage)


def fails(code: str, call: Callable[[], object]) -> AccountMergeError:
    with pytest.raises(AccountMergeError) as raised:
        call()
    assert raised.value.code == code, raised.value
    return raised.value


# -- uniform answers -------------------------------------------------------------------------
def reset_branches(world: World) -> dict[str, str]:
    """One identifier per branch of a reset request; the first may be reset."""
    service = world.service
    active = world.active(email="claire@example.org")
    no_address = world.active()
    provisional = world.letter(email="paul@example.org")
    absorbed = world.active(email="lea@example.org", password=OTHER)
    service.merge(active.id, absorbed.login, OTHER)
    service.deliver_notices(world.mailer)
    return {"resettable (login)": active.login, "resettable (address)": "claire@example.org",
            "unknown login": "nobody.here", "unknown address": "nobody@example.org",
            "never activated": provisional.login,
            "address given by the establishment": "paul@example.org",
            "no address": no_address.login, "absorbed (login)": absorbed.login,
            "absorbed (address)": "lea@example.org"}


class _ShapeSpy:
    """A unit of work that notes the shape of each change set applied through it."""

    def __init__(self, inner: Any, writes: list[str]) -> None:
        self._inner = inner
        self._writes = writes

    def __enter__(self) -> _ShapeSpy:
        self._inner.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._inner.__exit__(*exc)

    def apply(self, changes: ChangeSet) -> None:
        self._writes.append(",".join(
            f"{name}:{len(getattr(changes, name))}"
            for name in ("events", "audit", "throttles", "accounts", "credentials")
            if getattr(changes, name)))
        self._inner.apply(changes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def work_of(world: World, call: Callable[[], object]) -> tuple[list[str], list[str]]:
    """The storage calls *call* makes, and the shape of what it writes."""
    writes: list[str] = []
    original = world.store.inner.unit_of_work

    def spying(*, write: bool = True) -> Any:
        return _ShapeSpy(original(write=write), writes)

    setattr(world.store.inner, "unit_of_work", spying)  # noqa: B010 - this instance only
    try:
        with world.store.recording() as calls:
            call()
    finally:
        setattr(world.store.inner, "unit_of_work", original)  # noqa: B010
    return calls, writes


def assert_same_work(world: World, request: Callable[[str], object],
                     identifiers: dict[str, str]) -> None:
    works = {name: work_of(world, functools.partial(request, typed))
             for name, typed in identifiers.items()}
    reference = next(iter(works.values()))
    assert reference[0], "nothing was recorded: the check does not work"
    for name, work in works.items():
        assert work == reference, f"{name!r} does other storage work: {work} != {reference}"


def test_a_reset_request_does_the_same_work_whatever_it_finds(world: World) -> None:
    branches = reset_branches(world)
    assert_same_work(world, world.service.request_password_reset, branches)
    events = world.service.unpublished_events(1000)
    requests = [e.event for e in events if isinstance(e.event, PasswordResetRequested)]
    assert [len(e.account_ids) for e in requests] == [1, 1, 0, 0, 0, 0, 0, 0, 0]


def test_a_reminder_request_does_the_same_work_whatever_it_finds(world: World) -> None:
    reset_branches(world)
    addresses = {"known": "claire@example.org", "unknown": "nobody@example.org",
                 "given by the establishment": "paul@example.org",
                 "absorbed": "lea@example.org"}
    assert_same_work(world, world.service.request_login_reminder, addresses)
    reminders = [e.event for e in world.service.unpublished_events(1000)
                 if isinstance(e.event, LoginReminderRequested)]
    assert [len(e.account_ids) for e in reminders] == [1, 0, 0, 0]


def test_the_same_work_check_catches_a_quick_exit(world: World,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Teeth: a request that returns early when it finds no account is caught."""
    branches = reset_branches(world)

    def quick_exit(ctx: Context, typed: str, client: str | None) -> None:
        key = email_key(typed)
        with ctx.reading() as uow:
            found = uow.fetch(Fetch(logins=(key,))).by_login.get(key)
        if found is None:
            return
        ctx.storage.write(ChangeSet(events=(PasswordResetRequested(
            ctx.now(), (found.account.id,), ("0" * 32,)),)))

    monkeypatch.setattr(recovery, "request_password_reset", quick_exit)
    with pytest.raises(AssertionError, match="other storage work"):
        assert_same_work(world, world.service.request_password_reset, branches)


def test_a_request_never_sends_so_a_broken_mail_server_tells_nothing(world: World) -> None:
    """CVE-2024-45231: sending happens in deliver_notices, never in the request."""
    world.active(email="claire@example.org")
    broken = CapturingMailer(fail=lambda notice: True)
    for typed in ("claire@example.org", "nobody@example.org"):
        world.service.request_password_reset(typed)
    assert world.service.deliver_notices(broken) == 0
    assert broken.sent == []


# -- tokens work at most once, never after a password change ------------------------------
OPERATIONS = st.lists(st.sampled_from(["request", "request", "use newest", "use oldest",
                                       "use random", "change password", "wait 20 min",
                                       "sign in"]), min_size=1, max_size=14)


def run_operations(storage: Storage, operations: list[str],
                   pick: Callable[[int], int]) -> None:
    """Play *operations* on one account; every use of a token is checked against the model.

    A token is alive if no password changed since it was asked (a reset
    with any token is a change) and it is less than an hour old.
    """
    world = World(storage)
    service, clock = world.service, world.clock
    account = world.active(email="claire@example.org")
    password = STRONG
    generation = 0  # changes of password so far
    tokens: list[tuple[str, int, Any]] = []  # (token, generation when asked, issued at)
    for n, operation in enumerate(operations):
        if operation == "request":
            service.request_password_reset("claire@example.org")
            before = len(world.mailer.sent)
            service.deliver_notices(world.mailer)
            if len(world.mailer.sent) > before:
                tokens.append((world.token(), generation, clock()))
        elif operation.startswith("use") and tokens:
            index = {"use newest": -1, "use oldest": 0}.get(operation) \
                or pick(len(tokens) - 1)
            token, asked_in, issued = tokens[index]
            new = f"Tournesol-Bleu-Vif-{n:04d}"
            if asked_in == generation and clock() < issued + timedelta(hours=1):
                service.reset_password(token, new)
                password, generation = new, generation + 1
            else:
                fails("invalid_token", functools.partial(service.reset_password, token, new))
        elif operation == "change password":
            new = f"Girafe-Orange-Lente-{n:04d}"
            service.change_password(account.id, password, new)
            password, generation = new, generation + 1
        elif operation == "wait 20 min":
            clock.advance(minutes=20)
        elif operation == "sign in":
            assert service.authenticate(account.login, password).id == account.id
        clock.advance(seconds=1)


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(operations=OPERATIONS, data=st.data())
def test_any_token_works_at_most_once_and_never_after_a_password_change(
        make_storage: Callable[[], Storage], operations: list[str], data: st.DataObject) -> None:
    run_operations(make_storage(), operations,
                   lambda top: data.draw(st.integers(0, top)))


@pytest.mark.parametrize("operations", [["request", "change password", "use newest"],
                                        ["request", "use newest", "use newest"]])
def test_the_property_catches_a_binding_blind_to_the_password(
        monkeypatch: pytest.MonkeyPatch, operations: list[str]) -> None:
    """Teeth: with tokens not bound to the credential, an old link opens the account again."""
    original = TokenSigner.binding

    def blind(self: TokenSigner, account: Any, credential: Any) -> str:
        return original(self, account, None)

    monkeypatch.setattr(TokenSigner, "binding", blind)
    with pytest.raises(pytest.fail.Exception, match="DID NOT RAISE"):
        run_operations(InMemoryStorage(), operations, lambda top: 0)


def test_two_resets_racing_with_one_token_have_one_winner(storage: Storage) -> None:
    world = World(storage)
    world.active(email="claire@example.org")
    world.service.request_password_reset("claire@example.org")
    world.service.deliver_notices(world.mailer)
    token = world.token()
    outcomes = race(4, lambda i: world.service.reset_password(token, f"Tournesol-Bleu-Vif-{i}x"))
    assert sum(not isinstance(o, Exception) for o in outcomes) == 1
    assert all(o.code == "invalid_token" for o in outcomes if isinstance(o, AccountMergeError))


# -- forged, truncated, misdirected tokens ----------------------------------------------------
def _mutations(world: World) -> dict[str, str]:
    first = world.active(email="claire@example.org")
    world.active(email="paul@example.org", password=OTHER)
    world.service.request_password_reset("claire@example.org")
    world.service.request_password_reset("paul@example.org")
    world.service.request_email_change(first.id, STRONG, "c.robert@example.net")
    world.service.deliver_notices(world.mailer)
    resets = world.mailer.of_kind(NoticeKind.PASSWORD_RESET)
    token, other = (n.url.rsplit("/", 1)[1] for n in resets)  # type: ignore[union-attr]
    body, signature = token.split(".")
    flip = {c: d for c, d in zip(string.ascii_letters, string.ascii_letters[1:] + "a",
                                 strict=True)}
    foreign = TokenSigner("another host's secret key").sign(
        TokenClaims(TokenPurpose.PASSWORD_RESET, first.id, world.clock()), "0" * 32)
    return {
        "signature cut by one": token[:-1], "signature cut in half": f"{body}.{signature[:21]}",
        "no signature": body, "body only with dot": f"{body}.", "body cut": token[4:],
        "signature changed": f"{body}.{signature[:-1]}{flip.get(signature[-1], 'A')}",
        "body changed": f"{flip.get(body[0], 'A')}{body[1:]}.{signature}",
        "another account's signature": f"{body}.{other.split('.')[1]}",
        "another key": foreign, "an e-mail link": world.token(NoticeKind.EMAIL_VERIFICATION),
        "upper case": token.upper(), "junk after": token + "A", "empty": "",
        "dots": "..", "non-ASCII": "é" + token, "huge": token * 20, "nul": "\x00" + token,
    }


def test_forged_truncated_and_misdirected_tokens_are_invalid_token(world: World) -> None:
    forged = _mutations(world)
    before = snapshot(world.store, counters=False)
    for name, token in forged.items():
        error = fails("invalid_token", functools.partial(world.service.reset_password, token,
                                                          NEWER))
        assert error.code == "invalid_token", name
    assert changes(before, snapshot(world.store, counters=False)) == {}
    fails("invalid_token", lambda: world.service.confirm_email(world.token()))
    fails("invalid_input", lambda: world.service.reset_password(None, NEWER))  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=200) | st.from_regex(r"[A-Za-z0-9_-]{1,80}\.[A-Za-z0-9_-]{1,60}"))
def test_any_text_is_an_invalid_token(text: str) -> None:
    world = World(InMemoryStorage())
    fails("invalid_token", lambda: world.service.reset_password(text, NEWER))
    fails("invalid_token", lambda: world.service.confirm_email(text))


# -- tokens and passwords are nowhere ----------------------------------------------------------
class EchoingMailer(CapturingMailer):
    """Fails the first reset notice with an error quoting its link, as some servers do."""

    def send(self, notice: Notice) -> None:
        if notice.kind is NoticeKind.PASSWORD_RESET and not getattr(self, "failed", False):
            self.failed = True
            raise ConnectionError(f"550 rejected: {notice.url}")
        super().send(notice)


def exposed_everywhere(storage: Storage, caplog: pytest.LogCaptureFixture
                       ) -> tuple[set[str], str, list[str], list[bytes]]:
    """Every flow of the way back, success and failure: its tokens and where they could leak."""
    caplog.set_level(logging.DEBUG, logger="account_merge")
    world = World(storage)
    world.mailer = EchoingMailer()
    service = world.service
    seen = Exposure(world.store, caplog)
    account = world.active(email="claire@example.org")
    secret = "Mot-de-passe-Secret-§qxjzw¤"
    seen.call(lambda: service.request_email_change(account.id, STRONG, "c@example.net"), "ok")
    seen.call(lambda: service.deliver_notices(world.mailer), "ok")
    confirm = world.token(NoticeKind.EMAIL_VERIFICATION)
    seen.call(lambda: service.confirm_email(confirm[:-3]), "invalid_token")
    seen.call(lambda: service.confirm_email(confirm), "ok")
    seen.call(lambda: service.confirm_email(confirm), "invalid_token")
    seen.call(lambda: service.request_password_reset(account.login), "ok")
    seen.call(lambda: service.request_password_reset("nobody@example.org"), "ok")
    seen.call(lambda: service.deliver_notices(world.mailer), "ok")  # fails, logged
    seen.call(lambda: service.deliver_notices(world.mailer), "ok")
    reset = world.token()
    seen.call(lambda: service.reset_password(reset[:-3], secret), "invalid_token")
    seen.call(lambda: service.reset_password(reset, "short"), "password_policy")
    seen.call(lambda: service.reset_password(reset, secret), "ok")
    seen.call(lambda: service.reset_password(reset, secret), "invalid_token")
    seen.call(lambda: service.deliver_notices(world.mailer), "ok")
    texts, blobs = seen.gather(service)
    texts.extend(repr(n) for n in world.mailer.sent)
    texts.extend([repr(service), repr(service.storage)])
    assert caplog.records and any("not sent" in r.getMessage() for r in caplog.records)
    tokens = {n.url.rsplit("/", 1)[1] for n in world.mailer.sent
              if n.url is not None and "{" not in n.url and n.url.count("/") > 3}
    assert {reset, confirm} <= tokens
    return tokens, secret, texts, blobs


def test_no_token_or_new_password_shows_anywhere(
        make_storage: Callable[[], Storage], caplog: pytest.LogCaptureFixture) -> None:
    tokens, secret, texts, blobs = exposed_everywhere(make_storage(), caplog)
    for token in tokens:
        assert_nowhere(token, texts, blobs)
        assert_nowhere(token.split(".")[1], texts, blobs)  # the signature alone
    assert_nowhere(secret, texts, blobs)
    assert_nowhere(KEY, texts, blobs)


def test_the_check_catches_a_link_logged_from_a_mail_servers_error(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Teeth: without the scrubbing of mailer errors, the link reaches the log."""
    monkeypatch.setattr(notices, "_scrubbed", lambda error, token: str(error))
    tokens, _, texts, blobs = exposed_everywhere(InMemoryStorage(), caplog)
    with pytest.raises(AssertionError, match="the secret shows in"):
        for token in tokens:
            assert_nowhere(token, texts, blobs)


# -- throttling -------------------------------------------------------------------------------
def test_requests_are_limited_per_login_or_address_whether_it_exists_or_not(
        storage: Storage) -> None:
    world = World(storage, throttle=ThrottlePolicy())
    service = world.service
    world.active(email="claire@example.org")
    for typed in ("claire@example.org", "nobody@example.org"):
        for _ in range(7):
            service.request_password_reset(typed)
    service.deliver_notices(world.mailer)
    assert len(world.mailer.of_kind(NoticeKind.PASSWORD_RESET)) == 5
    throttled = [r for r in service.audit_trail(limit=1000)
                 if r.action is AuditAction.REQUEST_PASSWORD_RESET
                 and r.outcome == "too_many_attempts"]
    assert len(throttled) == 4  # 2 for each identifier, known or not
    # The same counter for the login reminder, and for another spelling of the address.
    service.request_login_reminder("CLAIRE@example.org")
    service.deliver_notices(world.mailer)
    assert world.mailer.of_kind(NoticeKind.LOGIN_REMINDER) == []
    world.clock.advance(hours=1)
    service.request_password_reset("claire@example.org")
    service.deliver_notices(world.mailer)
    assert len(world.mailer.of_kind(NoticeKind.PASSWORD_RESET)) == 6


def test_requests_are_limited_per_client_and_one_client_does_not_block_another(
        storage: Storage) -> None:
    world = World(storage, throttle=ThrottlePolicy(recovery_client_per_hour=3))
    service = world.service
    world.active(email="claire@example.org")
    for n in range(5):
        service.request_password_reset(f"someone{n}@example.org", client="203.0.113.7")
    service.request_password_reset("claire@example.org", client="203.0.113.7")
    service.deliver_notices(world.mailer)
    assert world.mailer.sent[1:] == []
    service.request_password_reset("claire@example.org", client="198.51.100.2")
    service.request_password_reset("claire@example.org")  # no client: no client counter
    service.deliver_notices(world.mailer)
    assert len(world.mailer.of_kind(NoticeKind.PASSWORD_RESET)) == 2


def test_failed_resets_are_slowed_down_per_client(storage: Storage) -> None:
    world = World(storage, throttle=ThrottlePolicy())
    service = world.service
    world.active(email="claire@example.org")
    service.request_password_reset("claire@example.org")
    service.deliver_notices(world.mailer)
    for _ in range(5):
        fails("invalid_token", lambda: service.reset_password("x.y", NEWER, client="bad"))
    error = fails("too_many_attempts", lambda: service.reset_password(world.token(), NEWER,
                                                                      client="bad"))
    assert error.retry_after >= 1  # type: ignore[attr-defined]
    assert service.reset_password(world.token(), NEWER, client="parent").id
