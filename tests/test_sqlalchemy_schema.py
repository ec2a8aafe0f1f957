"""SQLAlchemyStorage's tables: prefix, schema, Alembic, and the upgrade of an earlier release's.

The upgrade tests build the tables as the first release made them (the
metadata of ``git show cf6a6a7:src/account_merge/storage/sqlalchemy.py``,
copied below), fill them with a merged family, upgrade them, and read them
through the new store: with ``upgrade_schema()`` on PostgreSQL and SQLite,
and with the Alembic revision of docs/storage.md on PostgreSQL.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    inspect,
)
from sqlalchemy.dialects import postgresql

from account_merge.domain.child import Child
from account_merge.exceptions import AccountNotFound, InvalidInput, StorageError
from account_merge.ports import Fetch
from account_merge.storage.sqlalchemy import (
    DEFAULT_PREFIX,
    SQLAlchemyStorage,
    make_metadata,
    metadata,
)
from account_merge.storage.sqlalchemy.schema import UtcDateTime
from sqlalchemy_kit import (
    OTHER_SCHOOL,
    SCHOOL,
    STRONG,
    T0,
    activated,
    child,
    fresh_prefix,
    make_service,
    pg_engine,
    sqlite_engine,
)

__all__ = ["pg_engine"]

DOCS = Path(__file__).resolve().parent.parent / "docs" / "storage.md"


def test_the_tables_carry_the_prefix() -> None:
    assert all(name.startswith(DEFAULT_PREFIX) for name in metadata.tables)
    custom = make_metadata("ent_")
    assert sorted(custom.tables) == sorted(
        f"ent_{n}" for n in ("establishments", "accounts", "credentials", "links", "throttles",
                             "receipts", "outbox", "outbox_head", "audit",
                             "email_index", "notices", "notice_cursor", "register",
                             "closures"))
    for table in custom.tables.values():
        for index in table.indexes:
            assert index.name is not None and index.name.startswith("ent_")


def test_a_bad_prefix_is_refused() -> None:
    for bad in ("drop table;", "é_", "x" * 31, "1abc"):
        with pytest.raises(InvalidInput):
            make_metadata(bad)


def test_the_tables_can_join_the_hosts_metadata() -> None:
    host = MetaData()
    Table("users", host, Column("id", Integer, primary_key=True))
    assert make_metadata(metadata=host) is host
    assert {"users", f"{DEFAULT_PREFIX}accounts"} <= set(host.tables)


def test_two_prefixes_keep_two_stores_apart_in_one_database(
        pg_engine: sqlalchemy.Engine) -> None:
    first, second = (SQLAlchemyStorage(pg_engine, prefix=fresh_prefix()) for _ in range(2))
    for store in (first, second):
        store.create_schema()
    try:
        one, two = make_service(first), make_service(second)
        letter = one.issue_account(SCHOOL, "Claire Robert", [child(1)])
        with pytest.raises(AccountNotFound):
            two.get_account(letter.account_id)
        assert two.issue_account(SCHOOL, "Claire Robert", [child(1)]).login == letter.login
    finally:
        for store in (first, second):
            store.metadata.drop_all(pg_engine)


def test_the_tables_can_live_in_a_postgresql_schema(pg_engine: sqlalchemy.Engine) -> None:
    with pg_engine.begin() as conn:
        conn.exec_driver_sql("CREATE SCHEMA IF NOT EXISTS ent")
    storage = SQLAlchemyStorage(pg_engine, schema="ent")
    storage.create_schema()
    try:
        service = make_service(storage)
        principal = activated(service, "Claire Robert", [child(1)])
        letter = service.issue_account(SCHOOL, "Claire Robert", [child(2)])
        service.merge(principal.id, letter.login, letter.provisional_password)
        assert service.children(principal.id) == (child(1), child(2))
        assert f"{DEFAULT_PREFIX}accounts" in inspect(pg_engine).get_table_names(schema="ent")
    finally:
        with pg_engine.begin() as conn:
            conn.exec_driver_sql("DROP SCHEMA ent CASCADE")


def test_alembic_autogenerate_sees_every_table_and_index(pg_engine: sqlalchemy.Engine) -> None:
    """A host adding make_metadata() to its target_metadata gets the whole schema."""
    alembic_migration = pytest.importorskip("alembic.migration")
    alembic_autogenerate = pytest.importorskip("alembic.autogenerate")
    md = make_metadata(fresh_prefix())
    with pg_engine.connect() as conn:
        context = alembic_migration.MigrationContext.configure(conn)
        added = {diff[1].name for diff in alembic_autogenerate.compare_metadata(context, md)
                 if diff[0] == "add_table"}
        assert added == set(md.tables)
        md.create_all(conn)
        context = alembic_migration.MigrationContext.configure(conn)
        assert alembic_autogenerate.compare_metadata(context, md) == []
        md.drop_all(conn)
        conn.commit()


def test_create_schema_is_idempotent_and_keeps_the_data(
        pg_engine: sqlalchemy.Engine, tmp_path: Path) -> None:
    for storage in (SQLAlchemyStorage(pg_engine, prefix=fresh_prefix()),
                    SQLAlchemyStorage(sqlite_engine(tmp_path / "store.sqlite3"))):
        storage.create_schema()
        letter = make_service(storage).issue_account(SCHOOL, "Claire Robert", [child(1)])
        storage.create_schema()
        storage.create_schema()
        assert make_service(storage).children(letter.account_id) == (child(1),)
        assert storage.upgrade_schema() == []  # a new store has nothing to upgrade
        storage.metadata.drop_all(storage._bind_engine())


# -- the tables of the first release, and their upgrade -------------------------------------


def first_release_metadata(prefix: str) -> MetaData:
    """The tables as the first release made them (its make_metadata, copied)."""
    md = MetaData()
    p = prefix
    json = JSON().with_variant(postgresql.JSONB(), "postgresql")
    serial = BigInteger().with_variant(Integer(), "sqlite")
    Table(f"{p}establishments", md, Column("uai", String(16), nullable=False),
          Column("name", Text, nullable=False),
          PrimaryKeyConstraint("uai", name=f"{p}establishments_pkey"))
    Table(f"{p}accounts", md, Column("id", String(64), nullable=False),
          Column("login", Text, nullable=False), Column("login_key", Text, nullable=False),
          Column("role", String(16), nullable=False), Column("status", String(16), nullable=False),
          Column("display_name", Text, nullable=False),
          Column("establishment_uai", Text, nullable=False),
          Column("created_at", UtcDateTime(), nullable=False), Column("email", Text),
          Column("merged_into", String(64)),
          PrimaryKeyConstraint("id", name=f"{p}accounts_pkey"),
          UniqueConstraint("login_key", name=f"{p}accounts_login_key_key"),
          Index(f"{p}accounts_merged_into_idx", "merged_into"))
    Table(f"{p}credentials", md, Column("account_id", String(64), nullable=False),
          Column("password_hash", Text, nullable=False), Column("kind", String(16), nullable=False),
          Column("expires_at", UtcDateTime()),
          PrimaryKeyConstraint("account_id", name=f"{p}credentials_pkey"))
    Table(f"{p}children", md, Column("id", String(64), nullable=False),
          Column("first_name", Text, nullable=False), Column("last_name", Text, nullable=False),
          Column("establishment_uai", String(16), nullable=False),
          PrimaryKeyConstraint("id", name=f"{p}children_pkey"))
    Table(f"{p}links", md, Column("seq", serial, autoincrement=True, nullable=False),
          Column("account_id", String(64), nullable=False),
          Column("child_id", String(64), nullable=False),
          Column("origin_account_id", Text, nullable=False),
          Column("origin_establishment_uai", Text, nullable=False),
          Column("via_merge", Boolean, nullable=False),
          Column("linked_at", UtcDateTime(), nullable=False),
          PrimaryKeyConstraint("seq", name=f"{p}links_pkey"),
          UniqueConstraint("account_id", "child_id", name=f"{p}links_account_child_key"))
    Table(f"{p}throttles", md, Column("key", Text, nullable=False),
          Column("consecutive", Integer, nullable=False), Column("last_failure_at", UtcDateTime()),
          Column("recent", json, nullable=False),
          PrimaryKeyConstraint("key", name=f"{p}throttles_pkey"))
    Table(f"{p}receipts", md, Column("principal_id", String(64), nullable=False),
          Column("key", String(64), nullable=False), Column("login_key", Text, nullable=False),
          Column("receipt", json, nullable=False),
          PrimaryKeyConstraint("principal_id", "key", name=f"{p}receipts_pkey"))
    outbox = Table(f"{p}outbox", md,
                   Column("position", serial, autoincrement=False, nullable=False),
                   Column("name", String(64), nullable=False),
                   Column("payload", json, nullable=False),
                   Column("published", Boolean, nullable=False),
                   PrimaryKeyConstraint("position", name=f"{p}outbox_pkey"))
    unpublished = outbox.c.published == false()
    Index(f"{p}outbox_unpublished_idx", outbox.c.position,
          postgresql_where=unpublished, sqlite_where=unpublished)
    Table(f"{p}audit", md, Column("seq", serial, autoincrement=True, nullable=False),
          Column("at", UtcDateTime(), nullable=False), Column("action", String(32), nullable=False),
          Column("outcome", String(64), nullable=False), Column("actor", Text),
          Column("account_id", Text), Column("login", Text), Column("detail", Text),
          PrimaryKeyConstraint("seq", name=f"{p}audit_pkey"),
          Index(f"{p}audit_account_id_idx", "account_id"), Index(f"{p}audit_actor_idx", "actor"))
    return md


#: A principal ("p", ACTIVE) that absorbed "zb" and then "ab" (ids in the other order).
FAMILY = ["p", "zb", "ab"]


def fill_first_release(engine: sqlalchemy.Engine, prefix: str) -> None:
    """A merged family as the first release stored it."""
    md = first_release_metadata(prefix)
    md.create_all(engine)
    t = md.tables

    def account(i: str, status: str, merged_into: str | None) -> dict[str, Any]:
        return {"id": i, "login": f"claire.{i}", "login_key": f"claire.{i}",
                "role": "responsable", "status": status, "display_name": "Claire Robert",
                "establishment_uai": SCHOOL.uai, "created_at": T0, "email": None,
                "merged_into": merged_into}

    def link(account_id: str, child_id: str, origin: str, via_merge: bool) -> dict[str, Any]:
        return {"account_id": account_id, "child_id": child_id, "origin_account_id": origin,
                "origin_establishment_uai": SCHOOL.uai, "via_merge": via_merge,
                "linked_at": T0}

    with engine.begin() as conn:
        conn.execute(t[f"{prefix}establishments"].insert(), [
            {"uai": SCHOOL.uai, "name": SCHOOL.name}])
        conn.execute(t[f"{prefix}accounts"].insert(), [
            account("p", "active", None), account("zb", "merged", "p"),
            account("ab", "merged", "p")])
        conn.execute(t[f"{prefix}children"].insert(), [
            {"id": f"ine-{n}", "first_name": f"Enfant{n}", "last_name": "Robert",
             "establishment_uai": SCHOOL.uai} for n in (1, 2, 3)])
        conn.execute(t[f"{prefix}links"].insert(), [
            link("p", "ine-1", "p", False), link("p", "ine-2", "zb", True),
            link("p", "ine-3", "ab", True)])
        conn.execute(t[f"{prefix}outbox"].insert(), [
            {"position": n, "name": "account_activated",
             "payload": {"occurred_at": T0.isoformat(), "account_id": "p"}, "published": False}
            for n in (1, 2, 3)])
        conn.execute(t[f"{prefix}throttles"].insert(), [
            {"key": "merge:claire.zb", "consecutive": 2, "last_failure_at": T0,
             "recent": [T0.isoformat(timespec="microseconds")] * 2}])


def check_upgraded(storage: SQLAlchemyStorage) -> None:
    """The family reads back through the new store, which goes on working."""
    with storage.unit_of_work(write=False) as uow:
        found = uow.fetch(Fetch(accounts=["p"], links=["p"], absorbed=["p"],
                                throttles=["merge:claire.zb"]))
        assert [e.position for e in uow.unpublished(10)] == [1, 2, 3]
    assert [link.child for link in found.links["p"]] == [child(1), child(2), child(3)]
    assert [a.id for a in found.absorbed["p"]] == ["ab", "zb"]  # the old order: by id
    assert found.throttles["merge:claire.zb"].consecutive == 2
    service = make_service(storage)
    at_lycee = Child("ine-1", "Dylan", "Robert", OTHER_SCHOOL.uai)
    letter = service.issue_account(OTHER_SCHOOL, "Claire Robert", [at_lycee])
    assert service.children(letter.account_id) == (at_lycee,)
    receipt = service.merge("p", letter.login, letter.provisional_password)
    assert receipt.moved == ()  # the child stays once, as the collège's letter named it
    assert service.children("p") == (child(1), child(2), child(3))
    with storage.unit_of_work(write=False) as uow:
        absorbed = uow.fetch(Fetch(absorbed=["p"])).absorbed["p"]
    assert [a.id for a in absorbed] == ["ab", "zb", letter.account_id]
    positions = [e.position for e in service.unpublished_events(100)]
    assert positions == list(range(1, len(positions) + 1)) and len(positions) > 3
    other = activated(service, "Marc Robert", [child(9)])
    assert service.authenticate(other.login, STRONG).id == other.id


@pytest.fixture(params=["postgresql", "sqlite"])
def old_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLAlchemyStorage]:
    """A store on the tables of the first release, holding a merged family."""
    if request.param == "postgresql":
        engine = request.getfixturevalue("pg_engine")
        prefix = fresh_prefix("old")
    else:
        engine, prefix = sqlite_engine(tmp_path / "old.sqlite3"), DEFAULT_PREFIX
    fill_first_release(engine, prefix)
    storage = SQLAlchemyStorage(engine, prefix=prefix)
    yield storage
    storage.metadata.drop_all(engine)
    first_release_metadata(prefix).drop_all(engine)


def test_the_tables_of_the_first_release_need_an_upgrade(old_store: SQLAlchemyStorage) -> None:
    old_store.create_schema()  # creates what is missing, alters nothing
    with pytest.raises(StorageError, match=r"upgrade_schema\(\)"):
        make_service(old_store).children("p")


def test_upgrade_schema_brings_the_first_releases_tables_up_to_date(
        old_store: SQLAlchemyStorage) -> None:
    done = old_store.upgrade_schema()
    assert any("filled the child's name on 3 links" in step for step in done)
    assert any("numbered 2 absorbed accounts" in step for step in done)
    assert old_store.upgrade_schema() == []  # idempotent
    check_upgraded(old_store)
    engine = old_store._bind_engine()
    if engine.dialect.name == "postgresql":
        columns = {c["name"]: c for c in inspect(engine).get_columns(f"{old_store.prefix}links")}
        assert not columns["first_name"]["nullable"]


def alembic_revision() -> str:
    """The Alembic revision body of docs/storage.md, as the reader copies it."""
    text = DOCS.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    (revision,) = [b for b in blocks if "def upgrade() -> None:" in b]
    return revision


def test_the_alembic_revision_of_the_docs_upgrades_the_first_releases_tables(
        pg_engine: sqlalchemy.Engine) -> None:
    """Copied into a host's migrations, it leaves what make_metadata() describes."""
    migration = pytest.importorskip("alembic.migration")
    operations = pytest.importorskip("alembic.operations")
    autogenerate = pytest.importorskip("alembic.autogenerate")
    prefix = fresh_prefix("alembic")
    fill_first_release(pg_engine, prefix)
    namespace: dict[str, Any] = {}
    exec(compile(alembic_revision(), str(DOCS), "exec"), namespace)
    namespace["PREFIX"] = prefix
    storage = SQLAlchemyStorage(pg_engine, prefix=prefix)
    try:
        with pg_engine.begin() as conn:
            context = migration.MigrationContext.configure(conn)
            with operations.Operations.context(context):
                namespace["upgrade"]()
        with pg_engine.connect() as conn:
            diffs = autogenerate.compare_metadata(
                migration.MigrationContext.configure(conn), storage.metadata)
        assert [(d[0], d[1].name) for d in diffs] == [("remove_table", f"{prefix}children")]
        assert storage.upgrade_schema() == []  # nothing left to do
        check_upgraded(storage)
        with pg_engine.begin() as conn:
            context = migration.MigrationContext.configure(conn)
            with operations.Operations.context(context):
                namespace["downgrade"]()
        with pg_engine.connect() as conn:
            diffs = autogenerate.compare_metadata(
                migration.MigrationContext.configure(conn), first_release_metadata(prefix))
        assert diffs == []
    finally:
        storage.metadata.drop_all(pg_engine)
        first_release_metadata(prefix).drop_all(pg_engine)
