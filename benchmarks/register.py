"""P6: syncing an académie's register where nothing changed: entries per second, memory.

An académie has about 300,000 pupils and 450,000 responsables.  A sync
that finds the store as the register says must cost time proportional to
the register, no argon2 work, and memory flat in its size.  For each size
(pupils; 1.5 responsables each), in a process of its own:

1. the store is filled as a sync of that register leaves it
   (:func:`account_merge.testing.registers.load_academy`: accounts, links
   and register records, through the storage ports, no hashing);
2. the register is read alone (entries made as a reader makes them), for
   the record: what the reader costs;
3. the whole register is synced, timed (the best of *rounds*: the machine
   is shared): unchanged entries per second, and the verifier's work (none);
4. it is synced again with :mod:`tracemalloc` on: the peak of the Python
   heap during the sync (the store, filled before, is not counted).

Run from a checkout::

    python benchmarks/register.py --smoke     # seconds: checks that it runs
    python benchmarks/register.py --quick     # 20,000 and 80,000 pupils
    python benchmarks/register.py             # 75,000 and 300,000 pupils (an académie)

``--stores memory,sqlite`` chooses the stores (a store without the
``register`` tier is skipped), ``--json FILE`` writes the figures.
Figures are printed, never checked: the flatness is the ratio of the peaks.
The objects of the in-memory store are moved out of the garbage
collector's way once loaded (:func:`gc.freeze`), as a database's rows are:
otherwise every collection during the sync walks the whole store.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from account_merge import Establishment, InMemoryStorage, MergeService  # noqa: E402
from account_merge.ports import Storage  # noqa: E402
from account_merge.ports.register import Register  # noqa: E402
from account_merge.ports.tiers import supports  # noqa: E402
from account_merge.testing import CountingVerifier, fast_verifier  # noqa: E402
from account_merge.testing.registers import academy_entries, load_academy  # noqa: E402

ESTABLISHMENT = Establishment("0860001J", "Académie de démonstration")
SIZES = {"smoke": (1_000, 4_000), "quick": (20_000, 80_000), "full": (75_000, 300_000)}


def make_store(kind: str, folder: Path) -> Storage:
    if kind == "memory":
        return InMemoryStorage()
    if kind == "sqlite":
        from account_merge import SQLiteStorage  # noqa: PLC0415
        return SQLiteStorage(folder / "store.sqlite3")
    raise SystemExit(f"unknown store {kind!r}")


def measure(kind: str, children: int, folder: Path, rounds: int) -> dict[str, Any]:
    """One size on one store (run in a process of its own)."""
    storage = make_store(kind, folder)
    with storage.unit_of_work(write=False) as uow:
        if not supports(uow, Register):
            return {"store": kind, "children": children, "skipped": "no register tier"}
    verifier = CountingVerifier(fast_verifier())
    started = time.perf_counter()
    accounts = load_academy(storage, ESTABLISHMENT, children,
                            password_hash=verifier.hash("2BUYJ9C8"))
    loaded = time.perf_counter() - started
    gc.collect()
    gc.freeze()
    service = MergeService(storage, verifier)

    started = time.perf_counter()
    entries = sum(1 for _ in academy_entries(ESTABLISHMENT.uai, children))
    reading = time.perf_counter() - started

    verifier.reset()
    times = []
    for _ in range(rounds):
        gc.collect()
        started = time.perf_counter()
        report = service.sync_register(ESTABLISHMENT,
                                       academy_entries(ESTABLISHMENT.uai, children))
        times.append(time.perf_counter() - started)
        assert not report.changed and report.unchanged == accounts, report.counts()
    seconds = min(times)
    work = verifier.hashes + verifier.verifications

    gc.collect()
    tracemalloc.start()
    service.sync_register(ESTABLISHMENT, academy_entries(ESTABLISHMENT.uai, children))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    storage.close()
    return {"store": kind, "children": children, "responsables": accounts,
            "entries": entries, "load_s": round(loaded, 2), "read_s": round(reading, 2),
            "sync_s": round(seconds, 2), "entries_per_s": round(entries / seconds),
            "argon2_work": work, "peak_mib": round(peak / 2**20, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true")
    mode.add_argument("--quick", action="store_true")
    parser.add_argument("--stores", default="memory,sqlite")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--one", nargs=3, metavar=("STORE", "CHILDREN", "ROUNDS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory(prefix="am-bench-register-") as folder:
            print(json.dumps(measure(args.one[0], int(args.one[1]), Path(folder),
                                     int(args.one[2]))))
        return 0
    sizes = SIZES["smoke" if args.smoke else "quick" if args.quick else "full"]
    rounds = 1 if args.smoke else 3
    figures = []
    print("P6 register sync, nothing changed (figures only; no target is checked)")
    print(f"  {'store':<8} {'pupils':>8} {'entries':>8} {'load s':>8} {'read s':>7} "
          f"{'sync s':>7} {'entries/s':>10} {'argon2':>6} {'peak MiB':>9}")
    for kind in args.stores.split(","):
        for children in sizes:
            done = subprocess.run([sys.executable, __file__, "--one", kind, str(children),
                                   str(rounds)],
                                  capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(done.stderr, file=sys.stderr)
                return done.returncode
            figure = json.loads(done.stdout.strip().splitlines()[-1])
            figures.append(figure)
            if "skipped" in figure:
                print(f"  {kind:<8} {children:>8}  skipped: {figure['skipped']}")
                continue
            print(f"  {kind:<8} {children:>8} {figure['entries']:>8} {figure['load_s']:>8} "
                  f"{figure['read_s']:>7} {figure['sync_s']:>7} {figure['entries_per_s']:>10} "
                  f"{figure['argon2_work']:>6} {figure['peak_mib']:>9}")
        measured = [f for f in figures if f["store"] == kind and "skipped" not in f]
        if len(measured) == 2:
            small, large = measured
            print(f"  {kind}: x{large['entries'] / small['entries']:.0f} entries -> "
                  f"x{large['sync_s'] / small['sync_s']:.2f} time, "
                  f"x{large['peak_mib'] / small['peak_mib']:.2f} peak memory")
    if args.json:
        args.json.write_text(json.dumps({"P6": figures}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
