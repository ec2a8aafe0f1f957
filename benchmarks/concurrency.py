"""P5: eight clients signing in and merging at once, against the machine's argon2 capacity.

Each setup runs in a process of its own (``python concurrency.py SETUP
CONFIG``, which prints one JSON object), so that its memory is its own and
Django or Flask are configured afresh:

- ``sqlite-threads``, ``sqlite-processes``: :class:`~account_merge.SQLiteStorage`
  in one file, shared by 8 threads of one process, or used by 8 processes;
- ``postgresql``: :class:`~account_merge.storage.sqlalchemy.SQLAlchemyStorage`
  on an engine of its own, 8 threads;
- ``django-sqlite``, ``django-postgresql``: the service of the Django app
  (``get_service()``: :class:`~account_merge.contrib.django.storage.DjangoStorage`
  and the app's verifier), 8 threads, each with its own connection as
  Django keeps them;
- ``flask-sqlalchemy``: the Flask extension over Flask-SQLAlchemy's
  ``db.session`` (session mode: every unit of work a SAVEPOINT of the
  request's transaction), 8 threads, each operation in an application
  context of its own and committed by the host as a request would.

Every client has accounts of its own (bulk-loaded with hashes made at the
parameters measured): parents it signs in, with ``client=`` naming it as a
host would, and fresh letters it merges into those parents, at most three
per parent.  Its operations alternate: sign in, merge, sign in, merge...
So no client slows another by throttling, and each operation costs one
argon2 verification, as the capacity phases do.

The run alternates phases, all clients starting each phase together:
capacity (every client verifying a password bare, with
:class:`argon2.PasswordHasher`, no gate), workload, capacity, workload...,
capacity.  The figure of a round is the workload's operations per second
over the mean capacity of the two phases around it, in verifications per
second; the run's figure is the median over rounds.  Latencies are per
operation; peak memory is the resident set's high-water mark of the
process during the workload phases (reset before each with
``/proc/self/clear_refs``), beside the hashing gate's bound: the gate's
slots x the memory of one verification, plus what the process held just
before the phase.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import argon2

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
if str(SRC) not in sys.path:  # run as a script, in a process of its own
    sys.path[:0] = [str(SRC), str(HERE)]

from account_merge import AccountStatus, Argon2Verifier, MergeService  # noqa: E402
from account_merge.exceptions import AccountMergeError  # noqa: E402
from account_merge.ports import Storage  # noqa: E402
from account_merge.testing import BulkAccounts, bulk_load  # noqa: E402
from ops import ESTABLISHMENT, PASSWORD, PROVISIONAL_PASSWORD  # noqa: E402

#: The setups, in the order they run, and how they are named in the output.
SETUPS: dict[str, str] = {
    "sqlite-threads": "SQLite, 8 threads",
    "sqlite-processes": "SQLite, 8 processes",
    "postgresql": "PostgreSQL (SQLAlchemy)",
    "django-sqlite": "Django, SQLite",
    "django-postgresql": "Django, PostgreSQL",
    "flask-sqlalchemy": "Flask-SQLAlchemy (PG)",
}
#: The setups that need a PostgreSQL database (the run makes one for each).
POSTGRES_SETUPS = frozenset({"postgresql", "django-postgresql", "flask-sqlalchemy"})
#: At most this many merges into one parent.
MERGES_PER_PARENT = 3
#: Seconds a client waits at a phase's start for the others.
BARRIER_TIMEOUT = 600.0

HASHERS: dict[str, Callable[[], argon2.PasswordHasher]] = {
    "default": argon2.PasswordHasher,
    "cheapest": lambda: argon2.PasswordHasher.from_parameters(argon2.profiles.CHEAPEST),
}


@dataclass(frozen=True)
class Config:
    """What one setup runs (given as JSON on the command line)."""

    setup: str
    clients: int
    operations: int  # per client and phase (workload), verifications (capacity)
    rounds: int
    hasher: str
    folder: str
    database_url: str | None = None
    server_pid: int | None = None  # the PostgreSQL server's, to count its CPU time

    def merges_per_client(self) -> int:
        """Merges each client makes on its accounts at the measured parameters."""
        return (self.rounds * self.operations + WARM_UP) // 2 + 1

    def parents_per_client(self) -> int:
        return math.ceil(self.merges_per_client() / MERGES_PER_PARENT)


#: Operations of each client in the warm-up phase.
WARM_UP = 2


# -- memory -------------------------------------------------------------------------------
def _status(field_name: str) -> int:
    """A ``VmRSS``/``VmHWM`` line of /proc/self/status, in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field_name} in /proc/self/status")


def reset_peak() -> int:
    """Reset this process's peak resident set to its current size; return that size."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    return _status("VmRSS")


def peak() -> int:
    """This process's peak resident set since the last :func:`reset_peak`."""
    return _status("VmHWM")


def _cpu_of_tree(pid: int) -> float:
    """CPU seconds of process *pid*, of its children alive, and of those it waited for.

    For the PostgreSQL server: the postmaster's children are its backends.
    """
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        # After the command: state, ppid, ..., utime (14th field of the line), stime, cutime...
        own = int(entry.name) == pid
        if own or int(fields[1]) == pid:
            total += int(fields[11]) + int(fields[12])
            if own:
                total += int(fields[13]) + int(fields[14])
    return total / tick


def _cpu_of_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class PhaseWatch:
    """For one process: its resident set before each phase and its peak during it,
    and the CPU time the phase took (this process's, and the server's if any).

    Threads share it: the barrier that starts a phase calls it once (a
    reset), the barrier that ends it once more (a reading).  A client in a
    process of its own calls it itself.
    """

    def __init__(self, server_pid: int | None = None) -> None:
        self.server_pid = server_pid
        self.calls = 0
        self.before: list[int] = []
        self.peaks: list[int] = []
        self.cpu: list[float] = []
        self._cpu_at_start = 0.0

    def _cpu(self) -> float:
        server = _cpu_of_tree(self.server_pid) if self.server_pid is not None else 0.0
        return _cpu_of_self() + server

    def __call__(self) -> None:
        if self.calls % 2 == 0:
            self.before.append(reset_peak())
            self._cpu_at_start = self._cpu()
        else:
            self.cpu.append(self._cpu() - self._cpu_at_start)
            self.peaks.append(peak())
        self.calls += 1

    def fill(self, phases: list[Phase]) -> None:
        """Give each phase what was measured during it."""
        for phase, before, top, cpu in zip(phases, self.before, self.peaks, self.cpu,
                                           strict=True):
            phase.rss_before, phase.rss_peak, phase.cpu = before, top, cpu


# -- the clients ----------------------------------------------------------------------------
class Host(Protocol):
    """How a client calls the service: directly, or as a request of a framework would."""

    def call(self, step: Callable[[MergeService], object], light: bool) -> None: ...

    def done(self) -> None: ...


@dataclass
class Phase:
    """What one client did in one phase."""

    kind: str  # "warm-up", "light", "capacity", "workload"
    start: float = 0.0
    end: float = 0.0
    latencies: dict[str, list[float]] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    rss_before: int = 0
    rss_peak: int = 0
    cpu: float = 0.0  # of the whole process (threads) and of the server, if any


@dataclass
class Accounts:
    """A client's parents and letters of one kind, and how far it has used them."""

    parents: BulkAccounts
    letters: BulkAccounts
    signed_in: int = 0
    merged: int = 0


class Client:
    """One client: its accounts, the next operation to do.

    ``measured`` accounts have hashes at the parameters measured; ``light``
    ones hashes at argon2's cheapest parameters (verifying takes the
    parameters from the hash), for the phase that weighs the process
    without argon2's memory.
    """

    def __init__(self, index: int, measured: Accounts, light: Accounts) -> None:
        self.index = index
        self.accounts = {"measured": measured, "light": light}
        self.address = f"192.0.2.{index + 1}"  # the client the host vouches for

    def next_operation(self, which: str) -> tuple[str, Callable[[MergeService], object]]:
        """The next operation on the *which* accounts: sign-ins and merges, alternately."""
        a = self.accounts[which]
        if (a.signed_in + a.merged) % 2 == 0:
            login = a.parents.login(a.signed_in % a.parents.count)
            a.signed_in += 1
            address = self.address
            return "sign-in", lambda s: s.authenticate(login, PASSWORD, client=address)
        principal = a.parents.account_id(a.merged // MERGES_PER_PARENT)
        letter = a.letters.login(a.merged)
        a.merged += 1
        return "merge", lambda s: s.merge(principal, letter, PROVISIONAL_PASSWORD)


def _prefix(client: int, which: str, kind: str) -> str:
    return f"p5c{client}{which[0]}{kind}"


def client_accounts(config: Config, client: int) -> tuple[Accounts, Accounts]:
    """The accounts :func:`load_clients` stored for *client* (measured, light)."""
    merges = {"measured": config.merges_per_client(), "light": config.operations // 2 + 1}
    out = []
    for which in ("measured", "light"):
        parents = math.ceil(merges[which] / MERGES_PER_PARENT)
        out.append(Accounts(
            BulkAccounts(prefix=_prefix(client, which, "p"), count=parents,
                         establishment_uai=ESTABLISHMENT.uai, status=AccountStatus.ACTIVE),
            BulkAccounts(prefix=_prefix(client, which, "l"), count=merges[which],
                         establishment_uai=ESTABLISHMENT.uai,
                         status=AccountStatus.PROVISIONAL)))
    return out[0], out[1]


def load_clients(storage: Storage, config: Config) -> list[Client]:
    """Each client's parents (ACTIVE) and letters (PROVISIONAL), bulk-loaded."""
    hashers = {"measured": HASHERS[config.hasher](), "light": HASHERS["cheapest"]()}
    clients = []
    for c in range(config.clients):
        measured, light = client_accounts(config, c)
        for which, accounts in (("measured", measured), ("light", light)):
            h = hashers[which]
            for bulk, password in ((accounts.parents, PASSWORD),
                                   (accounts.letters, PROVISIONAL_PASSWORD)):
                bulk_load(storage, ESTABLISHMENT, bulk.count, password_hash=h.hash(password),
                          status=bulk.status, prefix=bulk.prefix)
        clients.append(Client(c, measured, light))
    return clients


def schedule(config: Config) -> list[str]:
    """The phases every client runs, in order."""
    phases = ["warm-up", "light", "capacity"]
    for _ in range(config.rounds):
        phases += ["workload", "capacity"]
    return phases


class Barrier(Protocol):
    def wait(self, timeout: float | None = None) -> int: ...


def run_client(client: Client, host: Host, config: Config, barrier: Barrier,
               bare: tuple[argon2.PasswordHasher, str], watch: PhaseWatch | None
               ) -> list[Phase]:
    """Every phase of the schedule, each started with the other clients.

    *watch* is given to a client alone in its process, which weighs it
    itself; threads share one through their barrier.
    """
    hasher, bare_hash = bare
    phases = []
    try:
        for kind in schedule(config):
            phase = Phase(kind)
            if watch is not None:
                watch()
            barrier.wait(BARRIER_TIMEOUT)
            phase.start = time.perf_counter()
            if kind == "capacity":
                times = phase.latencies.setdefault("verify", [])
                for _ in range(config.operations):
                    started = time.perf_counter()
                    hasher.verify(bare_hash, PASSWORD)
                    times.append(time.perf_counter() - started)
            else:
                count = WARM_UP if kind == "warm-up" else config.operations
                for _ in range(count):
                    name, step = client.next_operation("light" if kind == "light"
                                                       else "measured")
                    started = time.perf_counter()
                    try:
                        host.call(step, kind == "light")
                    except AccountMergeError as error:
                        key = f"{name}: {error.code}"
                        phase.failures[key] = phase.failures.get(key, 0) + 1
                    except Exception as error:  # counted, shown, and the run goes on
                        key = f"{name}: {type(error).__name__}: {error}"[:200]
                        phase.failures[key] = phase.failures.get(key, 0) + 1
                    phase.latencies.setdefault(name, []).append(time.perf_counter() - started)
            phase.end = time.perf_counter()
            barrier.wait(BARRIER_TIMEOUT)  # everyone is done: the peak is the phase's
            if watch is not None:
                watch()
            phases.append(phase)
    finally:
        host.done()
    if watch is not None:
        watch.fill(phases)
    return phases


# -- hosts -----------------------------------------------------------------------------------
def light_twin(service: MergeService) -> MergeService:
    """The same service with argon2's cheapest parameters, for the light phase.

    With the measured verifier, a sign-in on an account whose hash has
    other parameters would hash the password again at the measured ones.
    """
    verifier = Argon2Verifier(HASHERS["cheapest"](), warn_if_weak=False)
    return MergeService(service.storage, verifier, service.clock, policies=service.policies)


class Direct:
    """The service called directly, as a program of its own would."""

    def __init__(self, service: MergeService, light: MergeService) -> None:
        self.services = {False: service, True: light}

    def call(self, step: Callable[[MergeService], object], light: bool) -> None:
        step(self.services[light])

    def done(self) -> None:
        pass


class DjangoThread(Direct):
    """The Django app's service; the thread's connections are closed at the end."""

    def done(self) -> None:
        from django.db import connections  # noqa: PLC0415

        self.services[False].storage.close()  # this thread's side connections
        connections.close_all()


class FlaskRequest:
    """Each operation in an application context, committed by the host as a request would."""

    def __init__(self, app: Any, db: Any, light: MergeService) -> None:
        self.app = app
        self.db = db
        self.light = light

    def call(self, step: Callable[[MergeService], object], light: bool) -> None:
        from account_merge.contrib.flask import get_service  # noqa: PLC0415

        with self.app.app_context():
            try:
                step(self.light if light else get_service())
            except BaseException:
                self.db.session.rollback()
                raise
            self.db.session.commit()

    def done(self) -> None:
        pass


# -- setups ------------------------------------------------------------------------------------
@dataclass
class Prepared:
    """A setup ready to run: a host per client, the store to load, what to close at the end."""

    hosts: Callable[[], Host]
    storage: Storage
    close: Callable[[], None]


def _verifier(config: Config) -> Argon2Verifier:
    return Argon2Verifier(HASHERS[config.hasher](), warn_if_weak=False)


def _argon2_settings(config: Config) -> dict[str, Any]:
    """The service's settings for the hasher measured (none for argon2-cffi's defaults)."""
    if config.hasher == "default":
        return {}
    h = HASHERS[config.hasher]()
    return {"ARGON2_TIME_COST": h.time_cost, "ARGON2_MEMORY_COST": h.memory_cost,
            "ARGON2_PARALLELISM": h.parallelism, "ARGON2_WARN_IF_WEAK": False}


def _sqlite_path(config: Config) -> Path:
    return Path(config.folder) / f"p5-{config.setup}.sqlite3"


def _fresh_sqlite_file(config: Config) -> Path:
    """The setup's SQLite file, deleted if a former run left it."""
    path = _sqlite_path(config)
    for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        leftover.unlink(missing_ok=True)
    return path


def _postgres_parts(url: str) -> dict[str, str]:
    """Django's settings of a database given by a throwaway server's SQLAlchemy URL."""
    parts = urlsplit(url)
    return {"NAME": parts.path.lstrip("/"), "USER": parts.username or "postgres",
            "HOST": parse_qs(parts.query)["host"][0], "PORT": ""}


def prepare(config: Config) -> Prepared:
    """Build the setup's store and service (in this process)."""
    name = config.setup
    if name in ("sqlite-threads", "sqlite-processes"):
        from account_merge import SQLiteStorage  # noqa: PLC0415

        storage: Storage = SQLiteStorage(_fresh_sqlite_file(config))
        service = MergeService(storage, _verifier(config))
        light = light_twin(service)
        return Prepared(lambda: Direct(service, light), storage, storage.close)
    if name == "postgresql":
        from account_merge.storage.sqlalchemy import SQLAlchemyStorage  # noqa: PLC0415

        assert config.database_url is not None
        pg = SQLAlchemyStorage.from_url(config.database_url, pool_size=config.clients,
                                        max_overflow=config.clients)
        pg.create_schema()
        service = MergeService(pg, _verifier(config))
        light = light_twin(service)
        return Prepared(lambda: Direct(service, light), pg, pg.close)
    if name.startswith("django-"):
        return _prepare_django(config)
    if name == "flask-sqlalchemy":
        return _prepare_flask(config)
    raise SystemExit(f"unknown setup {name}")


def _prepare_django(config: Config) -> Prepared:
    import django  # noqa: PLC0415
    from django.conf import settings  # noqa: PLC0415
    from django.core.management import call_command  # noqa: PLC0415

    if config.setup == "django-sqlite":
        database: dict[str, Any] = {"ENGINE": "django.db.backends.sqlite3",
                                    "NAME": str(_fresh_sqlite_file(config)),
                                    "OPTIONS": {"timeout": 30}}
    else:
        assert config.database_url is not None
        database = {"ENGINE": "django.db.backends.postgresql",
                    **_postgres_parts(config.database_url)}
    settings.configure(
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth",
                        "account_merge.contrib.django"],
        DATABASES={"default": database}, USE_TZ=True, TIME_ZONE="Europe/Paris",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField", SECRET_KEY="benchmark-only",
        ACCOUNT_MERGE=_argon2_settings(config),  # nothing: the app's defaults
    )
    django.setup()
    call_command("migrate", verbosity=0)
    from django.db import connections  # noqa: PLC0415

    from account_merge.contrib.django.service import get_service  # noqa: PLC0415

    service = get_service()
    light = light_twin(service)
    connections.close_all()
    return Prepared(lambda: DjangoThread(service, light), service.storage, lambda: None)


def _prepare_flask(config: Config) -> Prepared:
    from flask import Flask  # noqa: PLC0415
    from flask_sqlalchemy import SQLAlchemy  # noqa: PLC0415

    from account_merge.contrib.flask import get_state, init_app  # noqa: PLC0415

    assert config.database_url is not None
    app = Flask("p5")
    app.config.update(
        SQLALCHEMY_DATABASE_URI=config.database_url,
        SQLALCHEMY_ENGINE_OPTIONS={"pool_size": config.clients,
                                   "max_overflow": config.clients},
        **{f"ACCOUNT_MERGE_{k}": v for k, v in _argon2_settings(config).items()},
    )
    db = SQLAlchemy(app)
    init_app(app)  # session mode: over db.session
    with app.app_context():
        state = get_state()
        assert state.in_host_transaction, state.storage_kind
        state.create_schema()
        db.session.commit()
        light = light_twin(state.service)
    # Bulk loading through a store of its own on the same tables (it commits per chunk).
    from account_merge.storage.sqlalchemy import SQLAlchemyStorage  # noqa: PLC0415

    loader = SQLAlchemyStorage.from_url(config.database_url)

    def close() -> None:
        loader.close()
        with app.app_context():
            db.engine.dispose()

    return Prepared(lambda: FlaskRequest(app, db, light), loader, close)


# -- the run of one setup ------------------------------------------------------------------------
def _bare(config: Config) -> tuple[argon2.PasswordHasher, str]:
    """The hasher of the capacity phases, and the hash they verify."""
    h = HASHERS[config.hasher]()
    return h, h.hash(PASSWORD)


def run_threads(config: Config) -> tuple[list[list[Phase]], int]:
    """The clients as threads of this process; their phases, and the gate's slots."""
    prepared = prepare(config)
    try:
        clients = load_clients(prepared.storage, config)
        watch = PhaseWatch(config.server_pid)
        barrier = threading.Barrier(config.clients, action=watch)
        bare = _bare(config)
        results: list[list[Phase]] = [[] for _ in clients]
        errors: list[BaseException] = []

        def client_thread(client: Client) -> None:
            try:
                results[client.index] = run_client(client, prepared.hosts(), config, barrier,
                                                   bare, None)
            except BaseException as error:
                errors.append(error)
                barrier.abort()

        threads = [threading.Thread(target=client_thread, args=(c,), name=f"client-{c.index}")
                   for c in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        for phases in results:
            watch.fill(phases)
        return results, gate_slots()
    finally:
        prepared.close()


def _process_client(config: Config, index: int, barrier: Barrier,
                    out: multiprocessing.Queue[Any]) -> None:
    """One client in a process of its own (SQLite only): its store, its service."""
    from account_merge import SQLiteStorage  # noqa: PLC0415

    storage = SQLiteStorage(_sqlite_path(config))
    service = MergeService(storage, _verifier(config))
    try:
        client = Client(index, *client_accounts(config, index))
        phases = run_client(client, Direct(service, light_twin(service)), config, barrier,
                            _bare(config),
                            PhaseWatch())
        out.put((index, [phase.__dict__ for phase in phases], gate_slots()))
    finally:
        storage.close()


def run_processes(config: Config) -> tuple[list[list[Phase]], int]:
    """The clients as processes (started afresh: nothing inherited but the config)."""
    prepared = prepare(config)
    try:
        load_clients(prepared.storage, config)
    finally:
        prepared.close()
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(config.clients)
    out: multiprocessing.Queue[Any] = context.Queue()
    processes = [context.Process(target=_process_client, args=(config, c, barrier, out))
                 for c in range(config.clients)]
    for process in processes:
        process.start()
    results: list[list[Phase]] = [[] for _ in processes]
    slots = 0
    try:
        for _ in processes:
            index, phases, slots = out.get(timeout=BARRIER_TIMEOUT * 4)
            results[index] = [Phase(**phase) for phase in phases]
    finally:
        for process in processes:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
    if any(process.exitcode for process in processes):
        raise RuntimeError("a client process failed")
    return results, slots


def gate_slots() -> int:
    """Verifications at once the process allows: ``set_max_concurrent_hashes``' default."""
    return len(os.sched_getaffinity(0))


def summarize(config: Config, results: list[list[Phase]], slots: int) -> dict[str, Any]:
    """The figures of one setup, from every client's phases.

    Memory, per process (threads share one): the bound of a workload phase
    is the resident set before it, plus what serving the clients added to
    it in the light phase (the same operations, no argon2 memory to speak
    of), plus the gate's slots x the memory of one verification.
    """
    kinds = [phase.kind for phase in results[0]]
    light_at = kinds.index("light")
    own_process = config.setup == "sqlite-processes"  # else the clients share one
    cores = len(os.sched_getaffinity(0))
    rates: list[tuple[str, float]] = []
    per_cpu: list[float] = []  # operations or verifications per CPU second
    shares: dict[str, list[float]] = {"workload": [], "capacity": []}
    latencies: dict[str, list[float]] = {}
    failures: Counter[str] = Counter()
    verification = HASHERS[config.hasher]().memory_cost * 1024
    memory: list[dict[str, int]] = []
    for n, kind in enumerate(kinds):
        phases = [client[n] for client in results]
        wall = max(p.end for p in phases) - min(p.start for p in phases)
        done = sum(len(times) for p in phases for times in p.latencies.values())
        rates.append((kind, done / wall))
        cpu = sum(p.cpu for p in phases) if own_process else phases[0].cpu
        per_cpu.append(done / cpu if cpu > 0 else float("nan"))
        if kind in shares:
            shares[kind].append(cpu / (wall * cores))
        if kind in ("workload", "light", "warm-up"):
            for p in phases:
                failures.update(p.failures)
        if kind != "workload":
            continue
        for client, p in zip(results, phases, strict=True):
            for name, times in p.latencies.items():
                latencies.setdefault(name, []).extend(times)
            light = client[light_at]
            serving = max(0, light.rss_peak - light.rss_before)
            memory.append({"before": p.rss_before, "serving": serving,
                           "bound": p.rss_before + serving + slots * verification,
                           "peak": p.rss_peak})
    ratios, cpu_ratios = [], []
    for n, (kind, rate) in enumerate(rates):
        if kind == "workload":
            capacity = (rates[n - 1][1] + rates[n + 1][1]) / 2
            ratios.append(rate / capacity)
            cpu_ratios.append(per_cpu[n] / ((per_cpu[n - 1] + per_cpu[n + 1]) / 2))
    every = sorted(t for times in latencies.values() for t in times)
    worst = max(memory, key=lambda m: m["peak"] - m["bound"])
    return {
        "setup": config.setup, "clients": config.clients, "operations": config.operations,
        "rounds": config.rounds, "ratios": ratios, "ratio": statistics.median(ratios),
        "operations_per_s": statistics.median(r for k, r in rates if k == "workload"),
        "capacity_per_s": statistics.median(r for k, r in rates if k == "capacity"),
        "cpu_ratios": cpu_ratios, "cpu_ratio": statistics.median(cpu_ratios),
        "cpu_share_workload": statistics.median(shares["workload"]),
        "cpu_share_capacity": statistics.median(shares["capacity"]),
        "workload_rates": [r for k, r in rates if k == "workload"],
        "capacity_rates": [r for k, r in rates if k == "capacity"],
        "operations_done": len(every), "failures": dict(failures),
        "failed": sum(failures.values()),
        "p50_s": _quantile(every, 0.50), "p99_s": _quantile(every, 0.99),
        "p99_by_operation_s": {name: _quantile(sorted(t), 0.99) for name, t in latencies.items()},
        "gate_slots": slots, "verification_bytes": verification,
        "peak_rss": worst["peak"], "rss_before": worst["before"], "serving": worst["serving"],
        "bound": worst["bound"], "within_bound": all(m["peak"] <= m["bound"] for m in memory),
        "load_average": os.getloadavg()[0],
    }


def _quantile(ordered: list[float], q: float) -> float:
    """The *q* quantile of sorted values (nearest rank)."""
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def run_setup(config: Config) -> dict[str, Any]:
    runner = run_processes if config.setup == "sqlite-processes" else run_threads
    results, slots = runner(config)
    return summarize(config, results, slots)


# -- from the benchmark command --------------------------------------------------------------------
@dataclass
class P5Result:
    hasher: str
    clients: int
    operations: int
    rounds: int
    setups: dict[str, dict[str, Any]]  # name -> figures
    skipped: dict[str, str]


def run_child(config: Config) -> dict[str, Any]:
    """Run one setup in a new process; its JSON answer."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(SRC), str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])])}
    completed = subprocess.run(
        [sys.executable, str(Path(__file__)), json.dumps(config.__dict__)], env=env,
        capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"concurrency.py {config.setup} failed:\n{completed.stderr}")
    answer: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return answer


def measure_p5(folder: Path, setups: list[str], database: Callable[[str], str | None],
               skipped: dict[str, str], *, clients: int, operations: int, rounds: int,
               hasher: str, server_pid: int | None = None) -> P5Result:
    """Each setup in turn, in a process of its own; *database* makes a PostgreSQL database.

    *server_pid* is the PostgreSQL server's (its postmaster): its CPU time
    counts in the setups that use it.
    """
    figures = {}
    for setup in setups:
        url = database(setup) if setup in POSTGRES_SETUPS else None
        config = Config(setup=setup, clients=clients, operations=operations, rounds=rounds,
                        hasher=hasher, folder=str(folder), database_url=url,
                        server_pid=server_pid if setup in POSTGRES_SETUPS else None)
        figures[setup] = run_child(config)
    return P5Result(hasher, clients, operations, rounds, figures, skipped)


def main(argv: list[str]) -> None:
    config = Config(**json.loads(argv[0]))
    print(json.dumps(run_setup(config)))


if __name__ == "__main__":
    main(sys.argv[1:])
