"""The tables of SQLAlchemyStorage.

:func:`make_metadata` describes the tables for a host's Alembic
migrations; :mod:`account_merge.storage.sqlalchemy.upgrade` brings tables
made by an earlier release of the library up to date (what
``SQLAlchemyStorage.upgrade_schema()`` runs).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import attrs
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Dialect,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    false,
    func,
    literal_column,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import DateTime, TypeDecorator, TypeEngine

from account_merge.domain.account import CredentialKind
from account_merge.domain.retention import ERASED_HASH
from account_merge.exceptions import InvalidInput

__all__ = [
    "DEFAULT_PREFIX",
    "Tables",
    "make_metadata",
    "metadata",
]

#: The prefix of the table names unless the host chooses another.
DEFAULT_PREFIX = "account_merge_"

_PROVISIONAL = CredentialKind.PROVISIONAL.value
_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,29}|", re.ASCII)


class UtcDateTime(TypeDecorator[datetime]):
    """An aware datetime, stored in UTC; read back aware and equal.

    ``TIMESTAMP WITH TIME ZONE`` on PostgreSQL; on SQLite, fixed-width
    ISO 8601 text in UTC (``2025-09-01T08:00:00.000000+00:00``), which
    sorts in time order.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(32))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise InvalidInput("datetime", "must be timezone-aware")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.isoformat(timespec="microseconds")
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        assert isinstance(value, datetime)
        if value.tzinfo is None:  # pragma: no cover - a column written by someone else
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _json() -> TypeEngine[Any]:
    return JSON().with_variant(postgresql.JSONB(), "postgresql")


def _serial() -> TypeEngine[int]:
    # SQLite gives an autoincrement only to an INTEGER PRIMARY KEY.
    return BigInteger().with_variant(Integer(), "sqlite")


def _id() -> String:
    return String(64)


def check_prefix(prefix: object) -> str:
    """*prefix* if it can start table names, ``invalid_input`` otherwise."""
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        raise InvalidInput("prefix", "must be at most 30 letters, digits or underscores")
    return prefix


def make_metadata(
    prefix: str = DEFAULT_PREFIX,
    *,
    schema: str | None = None,
    metadata: MetaData | None = None,
) -> MetaData:
    """The library's tables, named ``<prefix>accounts`` and so on.

    Give *metadata* (your application's own, for example Flask-SQLAlchemy's
    ``db.metadata``) to add the tables to it, so that Alembic's
    autogenerate sees them with yours; otherwise a new ``MetaData`` is
    returned, which Alembic also accepts in a list
    (``target_metadata = [app_metadata, make_metadata()]``).  *schema*
    puts them in another PostgreSQL schema.  Every index and constraint is
    named after its table, so two prefixes can share one database.
    """
    p = check_prefix(prefix)
    md = metadata if metadata is not None else MetaData(schema=schema)

    def table(name: str, *items: Any) -> Table:
        return Table(f"{p}{name}", md, *items, schema=schema)

    table(
        "establishments",
        Column("uai", String(16), nullable=False),
        Column("name", Text, nullable=False),
        PrimaryKeyConstraint("uai", name=f"{p}establishments_pkey"),
    )
    accounts = table(
        "accounts",
        Column("id", _id(), nullable=False),
        Column("login", Text, nullable=False),
        Column("login_key", Text, nullable=False),
        Column("role", String(16), nullable=False),
        Column("status", String(16), nullable=False),
        Column("display_name", Text, nullable=False),
        Column("establishment_uai", Text, nullable=False),
        Column("created_at", UtcDateTime(), nullable=False),
        Column("email", Text),
        Column("merged_into", _id()),
        # The order in which the accounts merged into one account were absorbed.
        Column("merged_seq", BigInteger),
        Column("last_signed_in_at", UtcDateTime()),
        PrimaryKeyConstraint("id", name=f"{p}accounts_pkey"),
        UniqueConstraint("login_key", name=f"{p}accounts_login_key_key"),
        Index(f"{p}accounts_merged_into_idx", "merged_into"),
    )
    credentials = table(
        "credentials",
        Column("account_id", _id(), nullable=False),
        Column("password_hash", Text, nullable=False),
        Column("kind", String(16), nullable=False),
        Column("expires_at", UtcDateTime()),
        PrimaryKeyConstraint("account_id", name=f"{p}credentials_pkey"),
    )
    links = table(
        "links",
        # ``seq`` orders an account's children in the order they were linked.
        Column("seq", _serial(), autoincrement=True, nullable=False),
        Column("account_id", _id(), nullable=False),
        Column("child_id", _id(), nullable=False),
        # The child as the letter that carried it named it.
        Column("first_name", Text, nullable=False),
        Column("last_name", Text, nullable=False),
        Column("establishment_uai", String(16), nullable=False),
        Column("origin_account_id", Text, nullable=False),
        Column("origin_establishment_uai", Text, nullable=False),
        Column("via_merge", Boolean, nullable=False),
        Column("linked_at", UtcDateTime(), nullable=False),
        PrimaryKeyConstraint("seq", name=f"{p}links_pkey"),
        UniqueConstraint("account_id", "child_id", name=f"{p}links_account_child_key"),
    )
    throttles = table(
        "throttles",
        Column("key", Text, nullable=False),
        Column("consecutive", Integer, nullable=False),
        Column("last_failure_at", UtcDateTime()),
        Column("recent", _json(), nullable=False),
        # The counter before the last attempt counted (see the module docstring).
        Column("previous_failure_at", UtcDateTime()),
        Column("previous_recent", _json()),
        PrimaryKeyConstraint("key", name=f"{p}throttles_pkey"),
    )
    table(
        "receipts",
        Column("principal_id", _id(), nullable=False),
        Column("key", _id(), nullable=False),
        Column("login_key", Text, nullable=False),
        Column("receipt", _json(), nullable=False),
        PrimaryKeyConstraint("principal_id", "key", name=f"{p}receipts_pkey"),
    )
    outbox = table(
        "outbox",
        Column("position", _serial(), autoincrement=False, nullable=False),
        Column("name", String(64), nullable=False),
        Column("payload", _json(), nullable=False),
        Column("published", Boolean, nullable=False),
        PrimaryKeyConstraint("position", name=f"{p}outbox_pkey"),
    )
    unpublished = outbox.c.published == false()
    Index(f"{p}outbox_unpublished_idx", outbox.c.position,
          postgresql_where=unpublished, sqlite_where=unpublished)
    table(
        "outbox_head",
        # One row (id 1): the last position given to an event.
        Column("id", SmallInteger, autoincrement=False, nullable=False),
        Column("last_position", BigInteger, nullable=False),
        PrimaryKeyConstraint("id", name=f"{p}outbox_head_pkey"),
    )
    # -- the way back: tiers email_index and notices --------------------------------
    table(
        "email_index",
        Column("account_id", _id(), nullable=False),
        Column("key", Text, nullable=False),
        PrimaryKeyConstraint("account_id", name=f"{p}email_index_pkey"),
        Index(f"{p}email_index_key_idx", "key", "account_id"),
    )
    notices = table(
        "notices",
        Column("id", String(128), nullable=False),
        Column("position", BigInteger, nullable=False),
        Column("role", String(64), nullable=False),
        Column("status", String(16), nullable=False),
        Column("attempts", Integer, nullable=False),
        Column("updated_at", UtcDateTime()),
        PrimaryKeyConstraint("id", name=f"{p}notices_pkey"),
    )
    pending = notices.c.status == "pending"
    Index(f"{p}notices_pending_idx", notices.c.position, notices.c.id,
          postgresql_where=pending, sqlite_where=pending)
    table(
        "notice_cursor",
        # One row (id 1): the last outbox position turned into notices.
        Column("id", SmallInteger, autoincrement=False, nullable=False),
        Column("position", BigInteger, nullable=False),
        PrimaryKeyConstraint("id", name=f"{p}notice_cursor_pkey"),
    )
    audit = table(
        "audit",
        Column("seq", _serial(), autoincrement=True, nullable=False),
        Column("at", UtcDateTime(), nullable=False),
        Column("action", String(32), nullable=False),
        Column("outcome", String(64), nullable=False),
        Column("actor", Text),
        Column("account_id", Text),
        Column("login", Text),
        Column("detail", Text),
        PrimaryKeyConstraint("seq", name=f"{p}audit_pkey"),
        Index(f"{p}audit_account_id_idx", "account_id"),
        Index(f"{p}audit_actor_idx", "actor"),
    )
    # Tier ``register`` (storage/sqlalchemy/register.py): the school's register.
    table(
        "register",
        Column("establishment_uai", String(16), nullable=False),
        Column("external_id", _id(), nullable=False),
        Column("account_id", _id(), nullable=False),
        Column("display_name", Text, nullable=False),
        Column("email", Text),
        # [[id, first name, last name, UAI], ...], sorted by id
        Column("children", _json(), nullable=False),
        PrimaryKeyConstraint("establishment_uai", "external_id", name=f"{p}register_pkey"),
        Index(f"{p}register_account_id_idx", "account_id"),
    )
    closures = table(
        "closures",
        Column("account_id", _id(), nullable=False),
        Column("establishment_uai", String(16), nullable=False),
        Column("closed_at", UtcDateTime(), nullable=False),
        PrimaryKeyConstraint("account_id", name=f"{p}closures_pkey"),
    )
    Index(f"{p}links_origin_idx", links.c.origin_establishment_uai, links.c.child_id)
    _retention_indexes(p, accounts, credentials, throttles, audit, notices, closures)
    return md


def _key(schema: str | None, name: str) -> str:
    return f"{schema}.{name}" if schema else name


def _retention_indexes(p: str, accounts: Table, credentials: Table, throttles: Table,
                       audit: Table, notices: Table, closures: Table) -> None:
    """Tier retention: what is due, and what names a login, found without a scan.

    Partial indexes are served only to queries that repeat their WHERE with
    the same literals (:mod:`~account_merge.storage.sqlalchemy.tiers`).
    """
    provisional = credentials.c.kind == literal_column(f"'{_PROVISIONAL}'")
    Index(f"{p}credentials_expiry_idx", credentials.c.expires_at, credentials.c.account_id,
          postgresql_where=provisional, sqlite_where=provisional)
    to_erase = and_(provisional,
                    credentials.c.password_hash != literal_column(f"'{ERASED_HASH}'"))
    Index(f"{p}credentials_to_erase_idx", credentials.c.expires_at,
          postgresql_where=to_erase, sqlite_where=to_erase)
    active = accounts.c.status == literal_column("'active'")
    Index(f"{p}accounts_last_sign_in_idx", accounts.c.last_signed_in_at, accounts.c.id,
          postgresql_where=active, sqlite_where=active)
    Index(f"{p}audit_at_idx", audit.c.at, audit.c.seq)
    Index(f"{p}audit_login_idx", func.lower(audit.c.login))
    Index(f"{p}throttles_last_failure_idx", throttles.c.last_failure_at)
    Index(f"{p}notices_position_idx", notices.c.position)
    Index(f"{p}closures_closed_at_idx", closures.c.closed_at, closures.c.account_id)


#: The tables with the default prefix, for a host's Alembic ``target_metadata``.
metadata: MetaData = make_metadata()


@attrs.frozen
class Tables:
    """The tables of one store (one prefix and schema)."""

    metadata: MetaData
    prefix: str
    schema: str | None
    establishments: Table
    accounts: Table
    credentials: Table
    links: Table
    throttles: Table
    receipts: Table
    outbox: Table
    outbox_head: Table
    audit: Table
    # the way back
    email_index: Table
    notices: Table
    notice_cursor: Table
    register: Table
    closures: Table

    @classmethod
    def build(cls, prefix: str, schema: str | None) -> Tables:
        md = make_metadata(prefix, schema=schema)

        def t(name: str) -> Table:
            return md.tables[f"{schema}.{prefix}{name}" if schema else f"{prefix}{name}"]

        return cls(md, prefix, schema, t("establishments"), t("accounts"), t("credentials"),
                   t("links"), t("throttles"), t("receipts"), t("outbox"), t("outbox_head"),
                   t("audit"), t("email_index"), t("notices"), t("notice_cursor"),
                   t("register"), t("closures"))

    def old_children(self) -> Table:
        """The ``children`` table of the first release, which links no longer use."""
        return Table(f"{self.prefix}children", MetaData(schema=self.schema),
                     Column("id", _id()), Column("first_name", Text),
                     Column("last_name", Text), Column("establishment_uai", String(16)),
                     schema=self.schema)
