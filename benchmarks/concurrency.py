"""P5: eight clients signing in and merging at once, against the machine's argon2 capacity.

Each setup (:mod:`setups`) runs in a process of its own (``python
concurrency.py CONFIG``, which prints one JSON object), so that its
memory is its own and Django or Flask are configured afresh; its clients
are threads of that process, or processes of their own.

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
second; the run's figure is the median over rounds.  Beside it, the same
per CPU second (:mod:`watch`: the clients' processes and the PostgreSQL
server's), which the share of the cores other programs take does not
move.  Latencies are per operation; peak memory is the resident set's
high-water mark of each process during the workload phases, beside the
hashing gate's bound: the gate's slots x the memory of one verification,
plus the process serving its clients (weighed in a "light" phase of the
same operations on accounts hashed at argon2's cheapest parameters).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
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

import argon2

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
if str(SRC) not in sys.path:  # run as a script, in a process of its own
    sys.path[:0] = [str(SRC), str(HERE)]

from account_merge import AccountStatus, MergeService  # noqa: E402
from account_merge.exceptions import AccountMergeError  # noqa: E402
from account_merge.ports import Storage  # noqa: E402
from account_merge.testing import BulkAccounts, bulk_load  # noqa: E402
from ops import ESTABLISHMENT, PASSWORD, PROVISIONAL_PASSWORD  # noqa: E402
from setups import (  # noqa: E402
    HASHERS,
    MERGES_PER_PARENT,
    POSTGRES_SETUPS,
    SETUPS,
    WARM_UP,
    Config,
    Direct,
    Host,
    light_twin,
    prepare,
    sqlite_path,
    verifier_for_config,
)
from watch import PhaseWatch  # noqa: E402

__all__ = ["POSTGRES_SETUPS", "SETUPS", "P5Result", "measure_p5"]

#: Seconds a client waits at a phase's start for the others.
BARRIER_TIMEOUT = 600.0


# -- the clients ----------------------------------------------------------------------------
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


def fill(phases: list[Phase], watch: PhaseWatch) -> None:
    """Give each phase what *watch* measured during it."""
    for phase, before, top, cpu in zip(phases, watch.before, watch.peaks, watch.cpu,
                                       strict=True):
        phase.rss_before, phase.rss_peak, phase.cpu = before, top, cpu


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
        fill(phases, watch)
    return phases


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
            fill(phases, watch)
        return results, gate_slots()
    finally:
        prepared.close()


def _process_client(config: Config, index: int, barrier: Barrier,
                    out: multiprocessing.Queue[Any]) -> None:
    """One client in a process of its own (SQLite only): its store, its service."""
    from account_merge import SQLiteStorage  # noqa: PLC0415

    storage = SQLiteStorage(sqlite_path(config))
    service = MergeService(storage, verifier_for_config(config))
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
