"""MergeService.sync_register: the school's register, on every store with the register tier."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

from account_merge import (
    AccountStatus,
    Child,
    Establishment,
    InMemoryStorage,
    MergeService,
    Role,
)
from account_merge.domain.register import RegisterEntry, RegisterLetter, SyncMode, SyncReport
from account_merge.exceptions import AccountMergeError, InvalidRegister, NotSupported
from account_merge.ports import ChangeSet, Storage
from account_merge.testing import CountingVerifier, FakeClock, capture_events, fast_verifier

COLLEGE = Establishment("0860001J", "Collège Jean Moulin")
LYCEE = Establishment("0860002K", "Lycée Camille Guérin")
STRONG = "Mot-de-passe-Sûr-2026"

DYLAN = Child("ine-dylan", "Dylan", "Robert", COLLEGE.uai)
FLORIAN = Child("ine-florian", "Florian", "Robert", COLLEGE.uai)
LEA = Child("ine-lea", "Léa", "Robert", COLLEGE.uai)
TOM = Child("ine-tom", "Tom", "Martin", COLLEGE.uai)
INES = Child("ine-ines", "Inès", "Robert", LYCEE.uai)


def entry(external_id: str, name: str, *children: Child, email: str | None = None,
          line: int | None = None) -> RegisterEntry:
    return RegisterEntry(external_id, name, children, email, line=line)


CLAIRE = entry("R1", "Claire Robert", DYLAN, FLORIAN)
MARC = entry("R2", "Marc Robert", DYLAN, FLORIAN)
PAUL = entry("R3", "Paul Martin", TOM)


def sync(service: MergeService, establishment: Establishment, *entries: RegisterEntry,
         **options: bool) -> SyncReport:
    return service.sync_register(establishment, entries, workers=1, **options)


def ids(children: Sequence[Child]) -> list[str]:
    return [c.id for c in children]


def letter_of(report: SyncReport, external_id: str) -> object:
    return next(i.letter for i in report.issued if i.external_id == external_id)


# -- a first sync, and the same register again ----------------------------------------


def test_a_first_sync_issues_one_letter_per_responsable_with_all_their_children(
        service: MergeService) -> None:
    """A CSV has a row per child: entries with one external id are one responsable."""
    report = sync(service, COLLEGE, entry("R1", "Claire Robert", DYLAN),
                  entry("R1", "Claire Robert", FLORIAN, email="claire@example.org"), PAUL)

    assert report.mode is SyncMode.FULL and not report.dry_run
    assert report.entries == 2
    assert [(i.external_id, ids(i.children)) for i in report.issued] == [
        ("R1", ["ine-dylan", "ine-florian"]), ("R3", ["ine-tom"])]
    claire = report.issued[0].letter
    assert claire is not None and claire.login == "claire.robert"
    assert service.children(claire.account_id) == (DYLAN, FLORIAN)
    assert service.get_account(claire.account_id).email == "claire@example.org"
    assert report.counts() == {"issued": 2, "attached": 0, "detached": 0, "closed": 0,
                               "reopened": 0, "renamed": 0, "adopted": 0, "unchanged": 0}


def test_the_same_register_twice_changes_nothing_and_hashes_nothing(
        service: MergeService, verifier: CountingVerifier) -> None:
    first = sync(service, COLLEGE, CLAIRE, MARC, PAUL)
    verifier.reset()
    with capture_events(service) as events:
        again = sync(service, COLLEGE, PAUL, MARC, CLAIRE)  # another order, same register

    assert again.counts() == {"issued": 0, "attached": 0, "detached": 0, "closed": 0,
                              "reopened": 0, "renamed": 0, "adopted": 0, "unchanged": 3}
    assert not again.changed
    assert verifier.hashes == 0 and verifier.verifications == 0
    assert events.names == ["register_synced"]
    for issued in first.issued:
        assert issued.letter is not None
        assert service.children(issued.letter.account_id) == issued.children


def test_a_known_responsable_never_gets_a_second_letter_and_keeps_login_and_password(
        service: MergeService) -> None:
    first = sync(service, COLLEGE, entry("R1", "Claire Robert", DYLAN))
    letter = first.letters[0]
    service.activate(letter.login, letter.provisional_password, STRONG)

    september = sync(service, COLLEGE, entry("R1", "Claire Robert", DYLAN, FLORIAN))

    assert september.issued == ()
    assert [(c.account_id, c.child, c.external_id) for c in september.attached] == [
        (letter.account_id, FLORIAN, "R1")]
    assert service.authenticate(letter.login, STRONG).id == letter.account_id
    assert service.children(letter.account_id) == (DYLAN, FLORIAN)


def test_a_corrected_register_changes_exactly_the_corrections(service: MergeService) -> None:
    first = sync(service, COLLEGE, CLAIRE, PAUL)
    claire, paul = (i.letter for i in first.issued)
    assert claire is not None and paul is not None
    dylann = Child(DYLAN.id, "Dylann", "Robert", COLLEGE.uai)

    corrected = sync(service, COLLEGE, entry("R1", "Claire Robert-Durand", dylann, LEA), PAUL)

    assert corrected.unchanged == 1
    assert [(n.old, n.new, n.external_id, n.child_id) for n in corrected.renamed] == [
        ("Claire Robert", "Claire Robert-Durand", "R1", None),
        ("Dylan Robert", "Dylann Robert", None, DYLAN.id)]
    assert [c.child for c in corrected.attached] == [LEA]
    assert [c.child for c in corrected.detached] == [FLORIAN]
    assert corrected.issued == () and corrected.closed == ()
    assert service.get_account(claire.account_id).display_name == "Claire Robert-Durand"
    assert service.get_account(claire.account_id).login == claire.login
    assert service.children(claire.account_id) == (dylann, LEA)
    assert service.children(paul.account_id) == (TOM,)
    assert not sync(service, COLLEGE, entry("R1", "Claire Robert-Durand", dylann, LEA),
                    PAUL).changed


# -- newly enrolled children, through merges ---------------------------------------------


def test_a_newly_enrolled_child_joins_the_live_account_holding_the_letter(
        service: MergeService) -> None:
    """Claire merged the collège's letter into her lycée account: Léa lands there."""
    lycee = service.issue_account(LYCEE, "Claire Robert", [INES])
    principal = service.activate(lycee.login, lycee.provisional_password, STRONG)
    college = sync(service, COLLEGE, entry("R1", "Claire Robert", DYLAN)).letters[0]
    service.merge(principal.id, college.login, college.provisional_password)

    with capture_events(service) as events:
        report = sync(service, COLLEGE, entry("R1", "Claire Robert", DYLAN, LEA))

    assert [(c.account_id, c.child) for c in report.attached] == [(principal.id, LEA)]
    assert report.issued == ()
    assert ids(service.children(principal.id)) == ["ine-ines", "ine-dylan", "ine-lea"]
    attached = [e for e in events.events if e.name == "child_attached"]
    assert [(e.account_id, e.child_id, e.establishment_uai)  # type: ignore[attr-defined]
            for e in attached] == [(principal.id, LEA.id, COLLEGE.uai)]
    lea = next(a for a in service.attached_children(principal.id) if a.child == LEA)
    assert (lea.origin_account_id, lea.via_merge) == (college.account_id, True)


def test_a_split_moves_the_register_entry_to_the_new_account(service: MergeService) -> None:
    """After the school undoes a merge, Marc's new children go to Marc's new account."""
    first = sync(service, COLLEGE, entry("R1", "Claire Robert", DYLAN),
                 entry("R2", "Marc Robert", FLORIAN))
    claire, marc = first.letters
    principal = service.activate(claire.login, claire.provisional_password, STRONG)
    service.merge(principal.id, marc.login, marc.provisional_password)
    split = service.split(COLLEGE, principal.id)

    report = sync(service, COLLEGE, entry("R1", "Claire Robert", DYLAN),
                  entry("R2", "Marc Robert", FLORIAN, LEA))

    assert [(c.account_id, c.child) for c in report.attached] == [(split.new_account_id, LEA)]
    assert service.children(principal.id) == (DYLAN,)
    assert service.children(split.new_account_id) == (FLORIAN, LEA)


def test_a_split_leaves_a_child_that_another_letter_of_the_account_lists(
        service: MergeService) -> None:
    """Claire and Marc both list Dylan; Marc's letter merged into Claire's account.

    The school splits: Marc's new account gets Dylan and Florian, and
    Claire's account keeps Dylan, whom her own letter lists.
    """
    first = sync(service, COLLEGE, entry("R1", "Claire Robert", DYLAN), MARC)
    claire, marc = first.letters
    principal = service.activate(claire.login, claire.provisional_password, STRONG)
    service.merge(principal.id, marc.login, marc.provisional_password)
    assert ids(service.children(principal.id)) == ["ine-dylan", "ine-florian"]
    held = {a.child.id: a.origin_account_id for a in service.attached_children(principal.id)}
    assert held == {DYLAN.id: claire.account_id, FLORIAN.id: marc.account_id}
    sync(service, COLLEGE, entry("R1", "Claire Robert", DYLAN), MARC)
    # Dylan came with Claire's letter: a split moves only Florian, as without a register.
    split = service.split(COLLEGE, principal.id)
    assert ids(split.moved) == ["ine-florian"]

    # Now Dylan credited to Marc's letter: Claire's own letter stops listing him, then lists
    # him again (a correction); the merged letter still listed him all along.
    sync(service, COLLEGE, entry("R1", "Claire Robert", LEA), entry("R2", "Marc Robert", DYLAN,
                                                                      FLORIAN))
    service.merge(principal.id, split.letter.login, split.letter.provisional_password)
    sync(service, COLLEGE, entry("R1", "Claire Robert", DYLAN, LEA),
         entry("R2", "Marc Robert", DYLAN, FLORIAN))
    again = service.split(COLLEGE, principal.id)
    assert DYLAN in service.children(principal.id)
    assert DYLAN in service.children(again.new_account_id)


# -- leavers and closed accounts ---------------------------------------------------------


def test_a_child_missing_from_a_whole_register_leaves_but_other_establishments_stay(
        service: MergeService) -> None:
    lycee = service.issue_account(LYCEE, "Claire Robert", [INES])
    principal = service.activate(lycee.login, lycee.provisional_password, STRONG)
    college = sync(service, COLLEGE, CLAIRE).letters[0]
    service.merge(principal.id, college.login, college.provisional_password)

    report = sync(service, COLLEGE, entry("R1", "Claire Robert", DYLAN))

    assert [(c.account_id, c.child) for c in report.detached] == [(principal.id, FLORIAN)]
    assert service.children(principal.id) == (INES, DYLAN)
    assert report.closed == ()


def test_an_account_left_with_no_child_is_closed_and_opens_nothing(
        service: MergeService, verifier: CountingVerifier) -> None:
    first = sync(service, COLLEGE, CLAIRE, PAUL)
    claire, paul = first.letters
    principal = service.activate(paul.login, paul.provisional_password, STRONG)
    active = service.activate(claire.login, claire.provisional_password, STRONG)

    with capture_events(service) as events:
        report = sync(service, COLLEGE, PAUL)

    assert [(c.account_id, c.display_name) for c in report.closed] == [
        (active.id, "Claire Robert")]
    assert service.get_account(active.id).status is AccountStatus.CLOSED
    assert service.children(active.id) == ()
    assert "account_closed" in events.names
    for call, code in (
            (lambda: service.authenticate(claire.login, STRONG), "invalid_credentials"),
            (lambda: service.merge(principal.id, claire.login, STRONG), "invalid_credentials"),
            (lambda: service.merge(active.id, paul.login, STRONG), "principal_not_active"),
            (lambda: service.split(COLLEGE, active.id), "not_authorized")):
        verifier.reset()
        with pytest.raises(AccountMergeError) as raised:
            call()
        assert raised.value.code == code
    assert service.resolve(active.id).id == active.id


def test_a_closed_account_opens_again_as_it_was_when_its_responsable_comes_back(
        service: MergeService) -> None:
    letter = sync(service, COLLEGE, CLAIRE, PAUL).letters[0]
    service.activate(letter.login, letter.provisional_password, STRONG)
    sync(service, COLLEGE, PAUL)

    report = sync(service, COLLEGE, entry("R1", "Claire Robert", LEA), PAUL)

    assert [c.account_id for c in report.reopened] == [letter.account_id]
    assert report.issued == ()
    assert service.authenticate(letter.login, STRONG).status is AccountStatus.ACTIVE
    assert service.children(letter.account_id) == (LEA,)


def test_a_letter_merged_into_a_departing_responsables_account_keeps_its_children(
        service: MergeService) -> None:
    """Marc merged his letter into Claire's account; Claire leaves the register.

    The account closes only when no letter it holds lists a child: Marc's
    letter still lists Dylan and Florian, so they stay, credited to it, and
    no enrolled child is left without a live account.
    """
    first = sync(service, COLLEGE, CLAIRE, MARC)
    claire, marc = first.letters
    principal = service.activate(claire.login, claire.provisional_password, STRONG)
    service.merge(principal.id, marc.login, marc.provisional_password)

    report = sync(service, COLLEGE, MARC)

    assert report.closed == () and report.detached == () and report.issued == ()
    assert service.get_account(principal.id).status is AccountStatus.ACTIVE
    assert {(a.child.id, a.origin_account_id, a.via_merge)
            for a in service.attached_children(principal.id)} == {
        (DYLAN.id, marc.account_id, True), (FLORIAN.id, marc.account_id, True)}
    # The school can still separate them: the children now came through a merge.
    split = service.split(COLLEGE, principal.id)
    assert split.letter.display_name == "Marc Robert"


def test_a_child_two_establishments_list_stays_while_one_of_them_does(
        service: MergeService) -> None:
    """The same pupil (same INE) on a collège letter and a lycée letter merged together."""
    dylan_at_lycee = Child(DYLAN.id, "Dylan", "Robert", LYCEE.uai)
    college = sync(service, COLLEGE, entry("R1", "Claire Robert", DYLAN)).letters[0]
    lycee = sync(service, LYCEE, entry("L1", "Claire Robert", dylan_at_lycee)).letters[0]
    principal = service.activate(college.login, college.provisional_password, STRONG)
    service.merge(principal.id, lycee.login, lycee.provisional_password)

    report = sync(service, COLLEGE, PAUL)  # Dylan has left the collège

    assert report.closed == ()
    assert [(a.child, a.origin_account_id) for a in
            service.attached_children(principal.id)] == [(dylan_at_lycee, lycee.account_id)]


def test_letters_issued_without_the_register_lose_the_children_it_no_longer_lists(
        service: MergeService) -> None:
    old = service.issue_account(COLLEGE, "Paul Martin", [TOM])
    pupil = service.issue_account(COLLEGE, "Tom", [TOM], role=Role.ELEVE)

    report = sync(service, COLLEGE, CLAIRE)

    assert [(c.account_id, c.child) for c in report.detached] == [(old.account_id, TOM)]
    assert [c.account_id for c in report.closed] == [old.account_id]
    assert service.children(pupil.account_id) == (TOM,)  # a pupil's own account: not ours


def test_a_partial_register_changes_only_the_responsables_it_lists(
        service: MergeService) -> None:
    first = sync(service, COLLEGE, CLAIRE, PAUL)

    delta = sync(service, COLLEGE, entry("R1", "Claire Robert", DYLAN, FLORIAN, LEA),
                 partial=True)

    assert delta.mode is SyncMode.PARTIAL
    assert [c.child for c in delta.attached] == [LEA]
    assert delta.detached == () and delta.closed == ()
    assert service.children(first.letters[1].account_id) == (TOM,)
    new = sync(service, COLLEGE, entry("R9", "Zoé Durand", LEA), partial=True)
    assert [i.external_id for i in new.issued] == ["R9"]


# -- letters issued before the register --------------------------------------------------


def test_a_letter_issued_before_the_register_is_adopted_when_exactly_one_bears_the_name(
        service: MergeService, verifier: CountingVerifier) -> None:
    old = service.issue_account(COLLEGE, "CLAIRE  ROBERT", [DYLAN])
    verifier.reset()

    report = sync(service, COLLEGE, CLAIRE)

    assert report.issued == ()
    assert report.adopted == (("R1", old.account_id),)
    assert [(n.old, n.new) for n in report.renamed] == [("CLAIRE  ROBERT", "Claire Robert")]
    assert verifier.hashes == 0
    assert service.children(old.account_id) == (DYLAN, FLORIAN)
    assert not sync(service, COLLEGE, CLAIRE).changed


def test_a_responsable_gets_a_letter_when_the_old_letters_name_someone_else(
        service: MergeService) -> None:
    service.issue_account(COLLEGE, "Marc Robert", [DYLAN])

    report = sync(service, COLLEGE, CLAIRE)

    assert report.adopted == ()
    assert [i.external_id for i in report.issued] == ["R1"]


# -- the preview -------------------------------------------------------------------------


def report_without_letters(service: MergeService, report: SyncReport) -> tuple[object, ...]:
    """The report with each account named by its login (ids differ from store to store)."""
    def login(account_id: str) -> str:
        return service.get_account(account_id).login

    return (report.counts(), [(i.external_id, i.children) for i in report.issued],
            [(login(c.account_id), c.child, c.external_id) for c in report.attached],
            [(login(c.account_id), c.child, c.external_id) for c in report.detached],
            [(login(c.account_id), c.display_name) for c in report.closed],
            [(login(c.account_id), c.display_name) for c in report.reopened],
            [(login(n.account_id), n.old, n.new, n.external_id, n.child_id)
             for n in report.renamed],
            [(ext, login(a)) for ext, a in report.adopted])


def test_a_dry_run_writes_nothing_and_reports_what_the_real_run_then_does(
        make_storage: object) -> None:
    """The same history on two stores: one previews, the other applies; same report."""
    services = [MergeService(make_storage(), CountingVerifier(), FakeClock())  # type: ignore[operator]
                for _ in range(2)]
    steps = [
        (CLAIRE, MARC, PAUL),
        (entry("R1", "Claire Robert-Durand", DYLAN, LEA), PAUL),
        (PAUL,),
        (entry("R1", "Claire Robert-Durand", LEA), entry("R4", "Zoé Durand", TOM)),
    ]
    for step in steps:
        reports = []
        for service in services:
            before = (service.unpublished_events(1000), service.audit_trail(None, 1000))
            hashes = service.verifier.hashes  # type: ignore[attr-defined]
            preview = sync(service, COLLEGE, *step, dry_run=True)
            assert (service.unpublished_events(1000), service.audit_trail(None, 1000)) == before
            assert service.verifier.hashes == hashes  # type: ignore[attr-defined]
            assert preview.dry_run and preview.letters == ()
            reports.append(preview)
        expected = report_without_letters(services[0], reports[0])
        applied = sync(services[1], COLLEGE, *step)
        assert report_without_letters(services[1], applied) == expected
        sync(services[0], COLLEGE, *step)


# -- a register that does not hold together --------------------------------------------


def test_a_register_with_structural_errors_is_refused_whole_naming_every_bad_line(
        service: MergeService) -> None:
    other = Child("ine-x", "Xavier", "Robert", LYCEE.uai)
    bad = [
        entry("R1", "Claire Robert", DYLAN, line=2),
        entry("R1", "Claire Durand", FLORIAN, line=3),                 # another name
        entry("R3", "Paul Martin", other, line=4),                     # another establishment
        entry("R3", "Paul Martin", Child(DYLAN.id, "Dilan", "Robert", COLLEGE.uai), line=5),
        entry("R5", "Zoé Durand", LEA, email="zoe@example.org", line=6),
        entry("R5", "Zoé Durand", TOM, email="zoe@example.net", line=7),
    ]
    with capture_events(service) as events, pytest.raises(InvalidRegister) as raised:
        sync(service, COLLEGE, *bad)

    error = raised.value
    assert error.code == "invalid_input" and error.field == "register"
    assert [(p.line, p.external_id, p.kind) for p in error.problems] == [
        (3, "R1", "other_name"), (4, "R3", "wrong_establishment"),
        (5, "R3", "child_differs"), (7, "R5", "other_email")]
    assert "line 3 (R1)" in str(error)
    assert events.names == [] and service.audit_trail(None, 10) == []
    assert sync(service, COLLEGE, dry_run=True).counts()["issued"] == 0


def test_a_store_without_the_register_tier_is_refused_before_anything_is_read(
        tmp_path: object) -> None:
    class CoreOnly:
        """The core tier only."""

        def __init__(self) -> None:
            self.inner = InMemoryStorage()

        def unit_of_work(self, *, write: bool = True) -> object:
            inner = self.inner.unit_of_work(write=write)

            class Uow:
                def __enter__(self) -> Uow:
                    inner.__enter__()
                    return self

                def __exit__(self, *exc: object) -> None:
                    inner.__exit__(None, None, None)

                fetch, apply, commit = inner.fetch, inner.apply, inner.commit

            return Uow()

        def write(self, changes: ChangeSet) -> None:
            self.inner.write(changes)

        def close(self) -> None: ...

    def never() -> Iterator[RegisterEntry]:
        raise AssertionError("the register was read")
        yield  # pragma: no cover

    service = MergeService(CoreOnly(), fast_verifier())  # type: ignore[arg-type]
    with pytest.raises(NotSupported) as raised:
        service.sync_register(COLLEGE, never())
    assert raised.value.code == "not_supported" and raised.value.tier == "register"


def test_bad_arguments_are_invalid_input(service: MergeService) -> None:
    for call in (lambda: service.sync_register("0860001J", []),  # type: ignore[arg-type]
                 lambda: service.sync_register(COLLEGE, [CLAIRE], dry_run=1),  # type: ignore[arg-type]
                 lambda: service.sync_register(COLLEGE, "R1"),  # type: ignore[arg-type]
                 lambda: service.sync_register(COLLEGE, [("R1", "Claire")]),  # type: ignore[list-item]
                 lambda: service.sync_register(COLLEGE, [CLAIRE], workers=0)):
        with pytest.raises(AccountMergeError) as raised:
            call()
        assert raised.value.code == "invalid_input"


# -- events, audit, progress -----------------------------------------------------------


def test_a_sync_writes_its_events_and_audit_and_says_how_far_it_is(
        service: MergeService) -> None:
    told: list[tuple[str, int, int | None]] = []
    letters: list[RegisterLetter] = []
    with capture_events(service) as events:
        service.sync_register(COLLEGE, [CLAIRE, PAUL], workers=1,
                              progress=lambda *args: told.append(args),
                              on_letter=letters.append)

    assert events.names == ["account_issued", "account_issued", "register_synced"]
    synced = events.events[-1]
    assert (synced.mode, synced.issued) == ("full", 2)  # type: ignore[attr-defined]
    assert [i.external_id for i in letters] == ["R1", "R3"]
    stages = [stage for stage, _, _ in told]
    assert stages[0] == "read" and stages[-1] == "letters"
    assert told[-1] == ("letters", 2, 2)
    trail = service.audit_trail(None, 10)
    assert [r.action.value for r in trail] == ["issue", "issue", "sync_register"]
    assert trail[-1].actor == f"establishment:{COLLEGE.uai}"


def test_letters_are_hashed_on_worker_processes() -> None:
    service = MergeService(InMemoryStorage(), fast_verifier())
    report = service.sync_register(COLLEGE, [CLAIRE, PAUL, entry("R4", "Zoé Durand", LEA)],
                                   workers=2)
    for letter in report.letters:
        account = service.activate(letter.login, letter.provisional_password, STRONG)
        assert account.status is AccountStatus.ACTIVE


def test_register_records_round_trip_through_the_store(storage: Storage) -> None:
    """The stores keep what a sync needs to tell an entry unchanged (names, e-mail, children)."""
    service = MergeService(storage, CountingVerifier(), FakeClock())
    sync(service, COLLEGE, entry("R1", "Hélène Le Gall", DYLAN, LEA, email="h@example.org"))
    assert sync(service, COLLEGE,
                entry("R1", "Hélène Le Gall", LEA, DYLAN, email="h@example.org")).unchanged == 1
