"""The register tier's conformance mixin catches what it claims to catch.

Each store below is the in-memory store with one bug in the tier; the
mixin must fail it, and pass the unmodified store (tests/test_conformance_memory.py).
"""

from __future__ import annotations

import pytest

BUGGY_STORES = '''
import attrs
from account_merge.domain.account import Role
from account_merge.ports.register import RegisterPage
from account_merge.storage.memory import InMemoryStorage, _InMemoryUnitOfWork


def store_with(uow_class):
    class Store(InMemoryStorage):
        def unit_of_work(self, *, write=True):
            return uow_class(self._tables, self._lock)
    return Store


class SkipsAtPageEnds(_InMemoryUnitOfWork):
    """Resumes one record too far: the first record of every next page is lost."""

    def register_page(self, establishment_uai, cursor, limit):
        page = super().register_page(establishment_uai, cursor, limit)
        return RegisterPage(page.items, str(int(page.cursor) + 1) if page.cursor else None)


class CountsPupils(_InMemoryUnitOfWork):
    """Lists the children of pupils' own accounts too."""

    def linked_children_page(self, establishment_uai, cursor, limit):
        holders = self._t.origin_links.get(establishment_uai, {})
        items = tuple(c for c, accounts in holders.items() if accounts)
        return RegisterPage(items, None)


class WritesPastRollback(_InMemoryUnitOfWork):
    """Writes register records without recording how to undo them."""

    def register_apply(self, changes):
        for record in changes.put:
            self._t.register[record.key] = record
        saved, self._undo = self._undo, []
        super().register_apply(attrs.evolve(changes, put=()))
        self._undo = saved + self._undo


class KeepsClosures(_InMemoryUnitOfWork):
    """Forgets to delete a closure when the account opens again."""

    def register_apply(self, changes):
        super().register_apply(attrs.evolve(changes, reopen=()))


class StaleIndex(_InMemoryUnitOfWork):
    """Leaves a replaced record under its old account."""

    def _unindex_record(self, record):
        pass
'''

SUITE = '''
import pytest
from buggy_stores import (store_with, SkipsAtPageEnds, CountsPupils, WritesPastRollback,
                          KeepsClosures, StaleIndex)
from account_merge.testing.conformance import RegisterContract

class TestSkipsAtPageEnds(RegisterContract):
    def make_storage(self):
        return store_with(SkipsAtPageEnds)()

class TestCountsPupils(RegisterContract):
    def make_storage(self):
        return store_with(CountsPupils)()

class TestWritesPastRollback(RegisterContract):
    def make_storage(self):
        return store_with(WritesPastRollback)()

class TestKeepsClosures(RegisterContract):
    def make_storage(self):
        return store_with(KeepsClosures)()

class TestStaleIndex(RegisterContract):
    def make_storage(self):
        return store_with(StaleIndex)()
'''

MUST_FAIL = {
    "TestSkipsAtPageEnds::test_a_pass_over_the_records_sees_each_once_a_page_at_a_time",
    "TestCountsPupils::"
    "test_a_pass_over_linked_children_lists_the_establishments_responsables_children",
    "TestWritesPastRollback::test_register_writes_roll_back_with_their_unit_of_work",
    "TestKeepsClosures::test_a_closed_account_and_its_closure_round_trip_and_reopen",
    "TestStaleIndex::test_a_record_is_replaced_by_key_and_leaves_its_old_account",
}


def test_each_bug_of_the_register_tier_fails_its_contract(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(buggy_stores=BUGGY_STORES, test_buggy=SUITE)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    failed = {
        "::".join(report.split(" ")[1].split("::")[-2:])
        for report in result.outlines
        if report.startswith("FAILED")
    }
    assert failed >= MUST_FAIL, result.outlines
