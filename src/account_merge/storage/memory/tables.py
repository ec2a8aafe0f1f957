"""The in-memory store's tables: one dict (or list) per table, and the tiers' indexes."""

from __future__ import annotations

from account_merge.domain.account import Account, Credential
from account_merge.domain.audit import AuditRecord
from account_merge.domain.child import ChildLink
from account_merge.domain.establishment import Establishment
from account_merge.domain.events import OutboxEntry
from account_merge.domain.notices import NoticeState
from account_merge.domain.register import RegisterRecord
from account_merge.domain.throttle import ThrottleState
from account_merge.ports.register import Closure
from account_merge.ports.storage import StoredReceipt


class _Tables:
    def __init__(self) -> None:
        self.establishments: dict[str, Establishment] = {}
        self.accounts: dict[str, Account] = {}
        self.logins: dict[str, str] = {}
        # merged_into -> absorbed ids, in the order they were absorbed
        self.absorbed: dict[str, dict[str, None]] = {}
        self.credentials: dict[str, Credential] = {}
        self.links: dict[str, dict[str, ChildLink]] = {}
        self.throttles: dict[str, ThrottleState] = {}
        self.receipts: dict[tuple[str, str], StoredReceipt] = {}
        # outbox[position - 1]; None where the retention tier deleted an entry, so
        # that a position is never given twice
        self.outbox: list[OutboxEntry | None] = []
        self.first_unpublished = 0
        # None where the retention tier deleted a record
        self.audit: list[AuditRecord | None] = []
        # tier email_index: account id -> key, and key -> account ids
        self.email_of: dict[str, str] = {}
        self.emails: dict[str, frozenset[str]] = {}
        # tier notices: the states by id, and the last outbox position turned into notices
        self.notices: dict[str, NoticeState] = {}
        self.notice_cursor = 0
        # tier ``register``: records by (uai, external id), paged in insertion order
        # (None where the retention tier deleted a record)
        self.register: dict[tuple[str, str], RegisterRecord] = {}
        self.register_order: dict[str, list[str | None]] = {}
        self.register_position: dict[tuple[str, str], int] = {}
        self.register_by_account: dict[str, dict[tuple[str, str], None]] = {}
        self.closures: dict[str, Closure] = {}
        # links by the establishment whose letter gave them: uai -> child id -> account ids
        # (None in origin_order where the retention tier deleted a child's last link)
        self.origin_links: dict[str, dict[str, dict[str, None]]] = {}
        self.origin_order: dict[str, list[str | None]] = {}
        self.origin_position: dict[tuple[str, str], int] = {}
