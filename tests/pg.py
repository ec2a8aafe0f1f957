"""A throwaway PostgreSQL server for the tests (a pytest plugin module).

The ``postgres_url`` fixture (session scope) runs ``initdb`` and
``pg_ctl`` on a Unix socket in a temporary folder (no TCP port), as the
``postgres`` user when the tests run as root, creates a database and
yields its SQLAlchemy URL; the server is stopped at the end of the run.

The server binaries are looked up in ``PATH`` and in
``/usr/lib/postgresql/*/bin``.  Without them the tests that need the
server are skipped, with a reason that says how to install them, unless
``ACCOUNT_MERGE_REQUIRE_POSTGRES=1`` is set (as CI does): then they fail.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REQUIRE_VARIABLE = "ACCOUNT_MERGE_REQUIRE_POSTGRES"
DATABASE = "account_merge_test"
HOW_TO_ENABLE = (
    "PostgreSQL server binaries (initdb, pg_ctl) not found in PATH or "
    "/usr/lib/postgresql/*/bin; install them to run these tests "
    "(Debian/Ubuntu: apt-get install postgresql)"
)


def find_server_binaries() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``, newest version first, or None."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                      key=lambda p: [int(x) for x in Path(p).parent.name.split(".")
                                     if x.isdigit()],
                      reverse=True)
    for folder in versions:
        if (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    return None


def _unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_VARIABLE) == "1":
        pytest.fail(f"{reason} ({REQUIRE_VARIABLE}=1 requires the server)", pytrace=False)
    pytest.skip(reason)


class _Cluster:
    """A server in *root*, run as *user* (None: the current user)."""

    def __init__(self, binaries: Path, root: Path, user: str | None) -> None:
        self.binaries = binaries
        self.root = root
        self.data = root / "data"
        self.user = user

    def run(self, *args: str) -> None:
        command = [str(self.binaries / args[0]), *args[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        completed = subprocess.run(command, capture_output=True, text=True, check=False,
                                   cwd=self.root)
        if completed.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(
                f"{' '.join(command)} failed ({completed.returncode}):\n"
                f"{completed.stdout}{completed.stderr}{tail}"
            )

    def start(self) -> None:
        self.run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
                 "-E", "UTF8", "--locale=C", "--no-sync")
        options = " ".join([
            "-c listen_addresses=''",
            f"-c unix_socket_directories={self.root}",
            "-c fsync=off",
            "-c synchronous_commit=off",
            "-c full_page_writes=off",
            "-c max_connections=200",
            "-c shared_buffers=32MB",
            "-c deadlock_timeout=100ms",
        ])
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"),
                 "-o", options, "-w", "-t", "60", "start")

    def stop(self) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@/{database}?host={self.root}"


def _server_user() -> str | None:
    """None, or ``postgres`` when running as root (initdb refuses root)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        _unavailable("the tests run as root and there is no 'postgres' user to run the server "
                     "(apt-get install postgresql creates it)")
    if shutil.which("runuser") is None:
        _unavailable("the tests run as root and 'runuser' is missing to start the server")
    return "postgres"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The SQLAlchemy URL of an empty database on a throwaway server."""
    binaries = find_server_binaries()
    if binaries is None:
        _unavailable(HOW_TO_ENABLE)
        raise AssertionError("unreachable")
    user = _server_user()
    # Short path: a Unix socket path is limited to about 100 bytes.
    root = Path(tempfile.mkdtemp(prefix="am-pg-", dir="/tmp"))
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    cluster = _Cluster(binaries, root, user)
    try:
        cluster.start()
    except (RuntimeError, OSError) as error:
        shutil.rmtree(root, ignore_errors=True)
        _unavailable(f"could not start a PostgreSQL server: {error}")
    try:
        import sqlalchemy

        admin = sqlalchemy.create_engine(cluster.url("postgres"),
                                         isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {DATABASE}")
        admin.dispose()
        yield cluster.url(DATABASE)
    finally:
        try:
            cluster.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)
