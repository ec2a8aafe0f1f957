"""The upgrade of tables an earlier release of SQLAlchemyStorage made: :func:`upgrade`
(what ``SQLAlchemyStorage.upgrade_schema()`` runs).

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
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    Connection,
    Table,
    func,
    insert,
    inspect,
    select,
    update,
)

from account_merge.exceptions import InvalidInput
from account_merge.storage.sqlalchemy.schema import Tables

__all__ = ["ADDED_COLUMNS", "upgrade"]


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
