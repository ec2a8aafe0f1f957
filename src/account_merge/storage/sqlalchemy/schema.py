"""The tables of SQLAlchemyStorage, and the upgrade of tables an earlier release made.

:func:`make_metadata` describes the tables for a host's Alembic
migrations; :func:`upgrade` brings tables made by an earlier release of
the library up to date (what ``SQLAlchemyStorage.upgrade_schema()`` runs).

What changed since the first release of these tables, and what
:func:`upgrade` does about it:

- ``links`` keeps the child as the letter that carried it named it
  (``first_name``, ``last_name``, ``establishment_uai``): filled from the
  ``children`` table, which is no longer used (and no longer in the
  metadata; it is left in place, with its rows, for the host to drop);
- ``accounts.merged_seq`` orders the accounts absorbed into one account by
  the time they were absorbed: filled, for the accounts absorbed before,
  in the order of their ids (the order the earlier release gave them);
- ``accounts.last_signed_in_at``: the last successful sign-in (unknown,
  so empty, for the sign-ins before);
- ``throttles.previous_failure_at`` and ``throttles.previous_recent``: the
  counter as it was before the last counted attempt, which the one
  statement that counts an attempt on PostgreSQL gives back;
- ``outbox_head``: the last outbox position given, one row whose lock
  orders the writers of events on PostgreSQL (filled from the outbox
  there; unused on SQLite, which has one writer at a time);
- the way back's tiers: ``email_index`` (the key of each account's
  address on record) and ``notices`` with ``notice_cursor`` (the delivery
  state of notices, and the last outbox position turned into notices): new
  tables, created empty (the events of an earlier release are looked at
  once for notices, and the notices of old ones dropped when made);
- ``register`` and ``closures`` (tier ``register``, the school's
  register), and the index ``links_origin_idx`` on the links: created;
- the retention tier: indexes on the times that make rows due (a letter's
  expiry, the last sign-in, a closure's time, an audit record's time, a
  counter's last failure), on the login typed in audit records and on the notices'
  positions, created on the existing tables.  ``outbox_head`` is also used
  on SQLite now, once the purge deleted events, so that a position is
  never given twice.

Over 500 lines because every table, index and upgrade step of the store is
described here, in one place a host's Alembic reads; splitting them would
hide which index serves which query.
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
    Connection,
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
    insert,
    inspect,
    literal_column,
    select,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import DateTime, TypeDecorator, TypeEngine

from account_merge.domain.account import CredentialKind
from account_merge.domain.retention import ERASED_HASH
from account_merge.exceptions import InvalidInput

__all__ = [
    "ADDED_COLUMNS",
    "DEFAULT_PREFIX",
    "Tables",
    "make_metadata",
    "metadata",
    "upgrade",
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


#: The columns added since the first release, by table name (without prefix).
ADDED_COLUMNS: dict[str, tuple[str, ...]] = {
    "accounts": ("merged_seq", "last_signed_in_at"),
    "links": ("first_name", "last_name", "establishment_uai"),
    "throttles": ("previous_failure_at", "previous_recent"),
}


def upgrade(conn: Connection, tables: Tables) -> list[str]:
    """Bring the tables of an earlier release up to date, in *conn*'s transaction.

    Idempotent: creates the tables that are missing, adds the columns that
    are missing (see the module docstring), fills them, and on PostgreSQL
    makes the child's names on the links ``NOT NULL`` once filled.  Returns
    what it did, in words (empty when there was nothing to do).
    """
    done: list[str] = []
    dialect = conn.dialect
    quote = dialect.identifier_preparer
    inspector = inspect(conn)
    schema = tables.schema
    missing_tables = [t for t in tables.metadata.sorted_tables
                      if not inspector.has_table(t.name, schema=schema)]
    tables.metadata.create_all(conn, tables=missing_tables, checkfirst=False)
    done += [f"created table {t.name}" for t in missing_tables]
    created = {t.name for t in missing_tables}
    for short, names in ADDED_COLUMNS.items():
        table: Table = getattr(tables, short)
        if table.name in created:
            continue
        present = {c["name"] for c in inspect(conn).get_columns(table.name, schema=schema)}
        for name in names:
            if name in present:
                continue
            column = table.c[name]
            ddl = (f"ALTER TABLE {quote.format_table(table)} ADD COLUMN "
                   f"{quote.quote(name)} {column.type.compile(dialect=dialect)}")
            conn.exec_driver_sql(ddl)
            done.append(f"added {table.name}.{name}")
    done += _create_missing_indexes(conn, tables, created)
    done += _fill_links(conn, tables, inspector)
    done += _fill_merged_seq(conn, tables)
    if dialect.name == "postgresql":  # where outbox_head gives the positions
        done += _seed_outbox_head(conn, tables)
        done += _links_not_null(conn, tables)
    return done


def _create_missing_indexes(conn: Connection, tables: Tables, created: set[str]) -> list[str]:
    """The indexes of the metadata that tables made by an earlier release lack."""
    done = []
    for table in tables.metadata.sorted_tables:
        if table.name in created:
            continue
        present = _index_names(conn, table, tables.schema)
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            if index.name not in present:
                index.create(conn)
                done.append(f"created index {index.name}")
    return done


def _index_names(conn: Connection, table: Table, schema: str | None) -> set[str]:
    """The names of *table*'s indexes (on SQLite, those on expressions too, which
    SQLAlchemy does not reflect)."""
    if conn.dialect.name == "sqlite":
        return {row[0] for row in conn.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?",
            (table.name,))}
    return {str(i["name"]) for i in inspect(conn).get_indexes(table.name, schema=schema)}


def _fill_links(conn: Connection, tables: Tables, inspector: Any) -> list[str]:
    """The child's names and school on each link, from the first release's children table."""
    links = tables.links
    empty = links.c.first_name.is_(None)
    if conn.execute(select(func.count()).select_from(links).where(empty)).scalar_one() == 0:
        return []
    children = tables.old_children()
    if not inspector.has_table(children.name, schema=tables.schema):
        raise InvalidInput("schema", f"{links.name} has links without the child's name, and "
                                     f"there is no {children.name} table to take it from")

    def of_child(column: str) -> Any:
        return (select(children.c[column]).where(children.c.id == links.c.child_id)
                .scalar_subquery())

    filled = conn.execute(update(links).where(empty).values(
        first_name=of_child("first_name"), last_name=of_child("last_name"),
        establishment_uai=of_child("establishment_uai"))).rowcount
    left = conn.execute(select(func.count()).select_from(links).where(empty)).scalar_one()
    if left:
        raise InvalidInput("schema", f"{left} links name a child missing from {children.name}")
    return [f"filled the child's name on {filled} links from {children.name}"]


def _fill_merged_seq(conn: Connection, tables: Tables) -> list[str]:
    """The order of absorption of the accounts absorbed before: the order of their ids."""
    accounts = tables.accounts
    other = accounts.alias("earlier")
    rank = (select(func.count()).select_from(other)
            .where(other.c.merged_into == accounts.c.merged_into, other.c.id <= accounts.c.id)
            .scalar_subquery())
    filled = conn.execute(update(accounts).where(
        accounts.c.merged_into.is_not(None), accounts.c.merged_seq.is_(None)
    ).values(merged_seq=rank)).rowcount
    return [f"numbered {filled} absorbed accounts in the order of their ids"] if filled else []


def _seed_outbox_head(conn: Connection, tables: Tables) -> list[str]:
    head, outbox = tables.outbox_head, tables.outbox
    if conn.execute(select(head.c.id)).first() is not None:
        return []
    last = conn.execute(select(func.max(outbox.c.position))).scalar_one()
    if last is None:
        return []  # the first event will make the row
    conn.execute(insert(head).values(id=1, last_position=last))
    return [f"set {head.name} to the outbox's last position, {last}"]


def _links_not_null(conn: Connection, tables: Tables) -> list[str]:
    links = tables.links
    quote = conn.dialect.identifier_preparer
    columns = {c["name"]: c for c in inspect(conn).get_columns(links.name, schema=tables.schema)}
    done = []
    for name in ADDED_COLUMNS["links"]:
        if columns[name]["nullable"]:
            conn.exec_driver_sql(f"ALTER TABLE {quote.format_table(links)} ALTER COLUMN "
                                 f"{quote.quote(name)} SET NOT NULL")
            done.append(f"made {links.name}.{name} NOT NULL")
    return done
