"""Optional tier ``bulk_load``: its mixin, :class:`BulkLoadContract`."""

from __future__ import annotations

from datetime import timedelta

import pytest

from account_merge.domain.account import AccountStatus, Credential, CredentialKind
from account_merge.exceptions import LoginTaken
from account_merge.ports.storage import Fetch, Storage
from account_merge.ports.tiers import BulkLoad, require_tier, supports
from account_merge.testing.conformance.harness import HASH, SCHOOL, T0, StorageHarness


class BulkLoadContract(StorageHarness):
    """Tier ``bulk_load``: many accounts in one transaction, all or none."""

    def test_bulk_rows_read_back_as_issued_accounts_and_a_clash_stores_none(
            self, storage: Storage) -> None:
        if not supports(storage, BulkLoad):
            pytest.skip("this store lacks the bulk_load tier")
        bulk: BulkLoad = require_tier(storage, BulkLoad)
        from account_merge.storage.bulk import BulkAccount  # noqa: PLC0415

        def row(n: int, login: str | None = None) -> BulkAccount:
            return BulkAccount(f"b{n}", login or f"bulk.{n}", login or f"bulk.{n}",
                               AccountStatus.PROVISIONAL, f"Parent {n}", SCHOOL.uai, T0, HASH,
                               T0 + timedelta(days=90), f"ine-b{n}", "Enfant", "Bulk")

        bulk.bulk_insert([row(1), row(2)])
        fetched = self.fetch(storage, Fetch(accounts=["b1", "b2"], links=["b1"]))
        assert fetched.accounts["b1"].account.login == "bulk.1"
        assert fetched.accounts["b1"].credential == Credential(
            "b1", HASH, CredentialKind.PROVISIONAL, T0 + timedelta(days=90))
        assert [link.child.id for link in fetched.links["b1"]] == ["ine-b1"]
        with pytest.raises(LoginTaken):
            bulk.bulk_insert([row(3), row(4, login="bulk.1")])
        assert set(self.fetch(storage, Fetch(accounts=["b3", "b4"])).accounts) == set()
