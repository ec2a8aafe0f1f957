"""The conformance suite catches what it claims to catch.

A store with no locking and no rollback (tests/naive_storage.py) must fail
the rollback, isolation, outbox and counter contracts; the in-memory store,
which differs from it only by its lock and its undo log, passes them all.
"""

from __future__ import annotations

from pathlib import Path

import pytest

NAIVE_SOURCE = (Path(__file__).parent / "naive_storage.py").read_text(encoding="utf-8")

SUITE = """
from naive_storage import NaiveStorage
from account_merge.testing.conformance import StorageContract

class TestNaiveStorage(StorageContract):
    state_machine_examples = 5

    def make_storage(self):
        return NaiveStorage()
"""

MUST_FAIL = {
    "test_an_error_inside_a_unit_of_work_rolls_back_everything",
    "test_leaving_without_commit_rolls_back",
    "test_a_unit_of_work_goes_on_after_a_commit",
    "test_a_count_is_rolled_back_with_its_unit_of_work",
    "test_a_locked_read_sees_the_write_committed_before_it",
    "test_a_locked_counter_loses_no_update",
    "test_concurrent_counts_are_all_counted_and_each_sees_its_own_before",
    "test_wrong_merge_attempts_at_one_login_are_throttled_across_threads",
    "test_unpublished_events_come_in_order_and_marking_removes_them",
    "test_outbox_positions_increase_without_gaps_even_after_a_rollback",
}


def test_the_naive_storage_fails_the_conformance_suite(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(naive_storage=NAIVE_SOURCE, test_naive=SUITE)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    failed = {
        report.split("::")[-1].split(" ")[0]
        for report in result.outlines
        if report.startswith("FAILED")
    }
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert failed >= MUST_FAIL, failed
