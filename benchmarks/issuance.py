"""P3: a school's letters issued on every core, against one core hashing alone.

Each measurement runs in a process of its own (``python issuance.py
...``), so that its peak memory is its own and the pool's workers fork
from a small process:

- ``one-core COUNT HASHER CPU``: pinned to the CPU numbered CPU (among
  those this process may use), hash COUNT passwords one after the other
  with a bare :class:`argon2.PasswordHasher`; the reference runs one such
  process on every core at once, so that it meets the same machine as
  the batch it is compared with;
- ``issue COUNT HASHER FOLDER``: issue COUNT letters with
  :meth:`MergeService.issue_accounts` (one worker per CPU) into a new
  SQLite file in FOLDER;
- ``memory COUNT HASHER FOLDER WARM_UP``: the same with WARM_UP letters,
  then COUNT, then 4 x COUNT, tracing the Python heap's peak during the
  last two batches.

Each prints one JSON object.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import argon2

from account_merge import Argon2Verifier, Child, MergeService, SQLiteStorage
from ops import ESTABLISHMENT

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"

HASHERS = {
    "default": argon2.PasswordHasher,
    "cheapest": lambda: argon2.PasswordHasher.from_parameters(argon2.profiles.CHEAPEST),
}


def cores() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0))


def _families(count: int, start: int = 0) -> Iterator[tuple[str, list[Child]]]:
    for n in range(start, start + count):
        yield (f"Responsable {n}",
               [Child(f"ine-{n:08d}", f"Enfant{n}", "Robert", ESTABLISHMENT.uai)])


def _cpu_seconds(*who: int) -> float:
    """User and system time of this process (its threads) and of the children it waited for."""
    total = 0.0
    for target in who:
        usage = resource.getrusage(target)
        total += usage.ru_utime + usage.ru_stime
    return total


def _one_core(count: int, hasher_name: str, cpu: int) -> dict[str, float]:
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[cpu]})
    hasher = HASHERS[hasher_name]()
    hasher.hash("warm-up")
    cpu_before = _cpu_seconds(resource.RUSAGE_SELF)
    started = time.perf_counter()
    for n in range(count):
        hasher.hash(f"ABCD{n:04d}")
    elapsed = time.perf_counter() - started
    return {"count": count, "seconds": elapsed, "rate": count / elapsed,
            "cpu_seconds": _cpu_seconds(resource.RUSAGE_SELF) - cpu_before}


def _rss_bytes() -> int:
    """The resident memory of this process now."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _service(hasher_name: str, folder: str, label: str) -> MergeService:
    storage = SQLiteStorage(Path(folder) / f"issue-{os.getpid()}-{label}.sqlite3")
    service = MergeService(storage, Argon2Verifier(HASHERS[hasher_name](), warn_if_weak=False))
    service.register_establishment(ESTABLISHMENT)  # the file exists before the clock starts
    return service


def _batch(service: MergeService, count: int, start: int = 0) -> dict[str, float]:
    """Issue *count* letters on every core; time, CPU time, and the heap's peak if traced."""
    tracing = tracemalloc.is_tracing()
    if tracing:
        tracemalloc.reset_peak()
    heap_before = tracemalloc.get_traced_memory()[0] if tracing else 0
    rss_before = _rss_bytes()
    reported = [0]  # the last count only: a list of every count would grow with the batch

    def progress(done: int) -> None:
        reported[0] = done

    cpu = _cpu_seconds(resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    issued = 0
    for _letter in service.issue_accounts(ESTABLISHMENT, _families(count, start),
                                          progress=progress):
        issued += 1
    elapsed = time.perf_counter() - started
    cpu = _cpu_seconds(resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) - cpu
    heap_peak = tracemalloc.get_traced_memory()[1] - heap_before if tracing else 0
    assert issued == count == reported[0], (issued, reported[0])
    return {"count": count, "seconds": elapsed, "rate": count / elapsed, "cpu_seconds": cpu,
            "heap_peak": heap_peak, "rss_growth": _rss_bytes() - rss_before}


def _issue(count: int, hasher_name: str, folder: str) -> dict[str, float]:
    service = _service(hasher_name, folder, str(count))
    result = _batch(service, count)
    service.storage.close()
    return result


def _memory(count: int, hasher_name: str, folder: str, warm_up: int) -> dict[str, Any]:
    """A warm-up batch, then *count* letters, then 4 x *count*, the heap traced throughout.

    The warm-up fills what any long batch fills once (caches, the driver's
    bookkeeping), so that the two measured batches compare what a batch
    holds because of its length.
    """
    service = _service(hasher_name, folder, "memory")
    _batch(service, warm_up, start=10**7)
    tracemalloc.start()
    small = _batch(service, count, start=0)
    large = _batch(service, 4 * count, start=count)
    # What one letter weighs when it is kept: what a batch that held its
    # letters would hold for each.
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    held = list(service.issue_accounts(ESTABLISHMENT, _families(200, start=5 * count),
                                       workers=1))
    gc.collect()
    letter_bytes = (tracemalloc.get_traced_memory()[0] - before) / len(held)
    tracemalloc.stop()
    service.storage.close()
    return {"small": small, "large": large, "letter_bytes": letter_bytes}


def run_children(*commands: list[str]) -> list[dict[str, Any]]:
    """Run this module once per command, all at once; their JSON answers."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(SRC), str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])])}
    processes = [subprocess.Popen([sys.executable, str(Path(__file__)), *args], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for args in commands]
    results = []
    for args, process in zip(commands, processes, strict=True):
        out, err = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"issuance.py {' '.join(args)} failed:\n{err}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def run_child(*args: str) -> dict[str, Any]:
    """Run this module in a new process with *args*; its JSON answer."""
    return run_children(list(args))[0]


def _every_core_alone(count: int, hasher: str, cores: int) -> dict[str, float]:
    """One pinned hashing process per core, all at once: their mean rate and CPU time."""
    runs = run_children(*(["one-core", str(count), hasher, str(cpu)] for cpu in range(cores)))
    return {"count": count * cores, "rate": statistics.mean(r["rate"] for r in runs),
            "cpu_seconds": sum(r["cpu_seconds"] for r in runs)}


@dataclass
class P3Result:
    cores: int
    hasher: str
    letters: int
    all_cores: list[dict[str, float]]
    one_core: list[dict[str, float]]
    memory: list[dict[str, float]]  # [N, 4N]
    letter_bytes: float  # the heap one letter takes when it is kept

    def ratios(self) -> list[float]:
        """Each batch's rate / (cores x the mean one-core rate measured just before and after)."""
        return [a["rate"] / (self.cores * (before["rate"] + after["rate"]) / 2)
                for a, before, after in zip(self.all_cores, self.one_core, self.one_core[1:],
                                            strict=False)]

    def ratio(self) -> float:
        return statistics.median(self.ratios())

    def rate_all(self) -> float:
        return statistics.median(r["rate"] for r in self.all_cores)

    def rate_one(self) -> float:
        return statistics.median(r["rate"] for r in self.one_core)

    def growth_per_letter(self) -> float:
        """Bytes the heap's peak grows by for each letter of the longer batch."""
        small, large = self.memory
        return (large["heap_peak"] - small["heap_peak"]) / (large["count"] - small["count"])

    def share_held(self) -> float:
        """That growth / the weight of a letter: 1 for a batch held whole, 0 when flat."""
        return max(0.0, self.growth_per_letter()) / self.letter_bytes

    def efficiency(self) -> float:
        """CPU time per hash alone / CPU time per letter of the batch (the library's cost)."""
        alone = statistics.median(o["cpu_seconds"] / o["count"] for o in self.one_core)
        batch = statistics.median(a["cpu_seconds"] / a["count"] for a in self.all_cores)
        return alone / batch

    def cpu_share(self) -> float:
        """CPU time the batch got / (wall time x cores): below 1 when others use the cores."""
        return statistics.median(a["cpu_seconds"] / (a["seconds"] * self.cores)
                                 for a in self.all_cores)


def measure_p3(folder: Path, hasher: str, letters: int, rounds: int,
               memory_letters: int, memory_hasher: str, warm_up: int) -> P3Result:
    """Each batch between two runs of every core hashing alone; then the memory of N and 4N."""
    n = cores()
    all_cores: list[dict[str, float]] = []
    one_core = [_every_core_alone(max(2, letters // n), hasher, n)]
    for _ in range(rounds):
        all_cores.append(run_child("issue", str(letters), hasher, str(folder)))
        one_core.append(_every_core_alone(max(2, letters // n), hasher, n))
    traced = run_child("memory", str(memory_letters), memory_hasher, str(folder), str(warm_up))
    memory = [traced["small"], traced["large"]]
    return P3Result(n, hasher, letters, all_cores, one_core, memory, traced["letter_bytes"])


def main(argv: list[str]) -> None:
    command, count, hasher = argv[0], int(argv[1]), argv[2]
    result: dict[str, Any]
    if command == "one-core":
        result = _one_core(count, hasher, int(argv[3]))
    elif command == "issue":
        result = _issue(count, hasher, argv[3])
    elif command == "memory":
        result = _memory(count, hasher, argv[3], int(argv[4]))
    else:
        raise SystemExit(f"unknown command {command}")
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
