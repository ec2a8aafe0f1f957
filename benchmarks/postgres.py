"""SQLAlchemyStorage over a throwaway PostgreSQL server, when both are available.

The server is made for the run with ``initdb`` and ``pg_ctl`` in a
temporary folder, listens on a Unix socket only, and is stopped and
deleted at the end.  It keeps PostgreSQL's durable defaults (``fsync``
and ``synchronous_commit`` on), as the SQLite store keeps ``synchronous =
FULL``, so that a commit costs what it costs in production.  Each store
gets a database of its own.  When the tests run as root the server runs
as the ``postgres`` user (``initdb`` refuses root).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from account_merge.ports import Storage

#: A factory of fresh, empty stores (the label names the database).
Factory = Callable[[str], Storage]


def server_binaries() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: in PATH, else the newest /usr/lib/postgresql."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    return None


class _Server:
    def __init__(self, binaries: Path, root: Path, user: str | None) -> None:
        self.binaries, self.root, self.user = binaries, root, user

    def run(self, *args: str) -> None:
        command = [str(self.binaries / args[0]), *args[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        completed = subprocess.run(command, capture_output=True, text=True, check=False,
                                   cwd=self.root)
        if completed.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {completed.stderr.strip()[-500:]}")

    def start(self) -> None:
        data = self.root / "data"
        self.run("initdb", "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                 "--locale=C", "--no-sync")
        options = f"-c listen_addresses='' -c unix_socket_directories={self.root}"
        self.run("pg_ctl", "-D", str(data), "-l", str(self.root / "server.log"), "-o", options,
                 "-w", "-t", "60", "start")

    def stop(self) -> None:
        self.run("pg_ctl", "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@/{database}?host={self.root}"


@contextlib.contextmanager
def postgres_factory(folder: Path) -> Iterator[tuple[Factory | None, str]]:
    """``(factory, "")`` when PostgreSQL can be used, ``(None, why not)`` otherwise."""
    try:
        import sqlalchemy  # noqa: PLC0415

        from account_merge.storage.sqlalchemy import SQLAlchemyStorage  # noqa: PLC0415
    except ImportError as error:
        yield None, f"SQLAlchemyStorage is not available ({error})"
        return
    binaries = server_binaries()
    if binaries is None:
        yield None, ("no PostgreSQL server binaries (initdb, pg_ctl) in PATH or "
                     "/usr/lib/postgresql/*/bin (Debian: apt-get install postgresql)")
        return
    user = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            yield None, "running as root and there is no 'postgres' user to run the server"
            return
        user = "postgres"
    # A short path: a Unix socket's path is limited to about 100 bytes.
    root = Path(tempfile.mkdtemp(prefix="am-pg-", dir="/tmp"))
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    server = _Server(binaries, root, user)
    try:
        server.start()
    except (RuntimeError, OSError) as error:
        shutil.rmtree(root, ignore_errors=True)
        yield None, f"could not start a PostgreSQL server ({error})"
        return
    admin = sqlalchemy.create_engine(server.url("postgres"), isolation_level="AUTOCOMMIT")

    def make(label: str) -> Storage:
        database = "bench_" + "".join(c if c.isalnum() else "_" for c in label)
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {database}")
            connection.exec_driver_sql(f"CREATE DATABASE {database}")
        store = SQLAlchemyStorage.from_url(server.url(database))
        store.create_schema()
        return store

    try:
        yield make, ""
    finally:
        admin.dispose()
        try:
            server.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)
