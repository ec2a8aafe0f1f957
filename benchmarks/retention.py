"""Retention: purging the expired accounts of a large store, and a purge with nothing due.

The purge finds what is due through indexes and deletes it in batches, so
its cost follows what it deletes, not the size of the store.  For each
size (accounts in the store, a tenth of them letters never activated and
past their 90 days), in a process of its own and on each store:

1. the store is filled with :func:`account_merge.testing.bulk_load` (no
   hashing): a tenth never-activated letters issued 100 days ago, the rest
   half letters issued today and half activated accounts;
2. a dry run is timed (it reads and deletes as the purge would, in units
   of work rolled back);
3. the purge is timed: accounts deleted per second (each with its link,
   credential, event and, for its letter, hash erased);
4. a second purge, with nothing due, is timed: what a nightly run costs
   once the backlog is gone (it still reads the outbox once, the events
   of the deleted accounts included).

Run from a checkout::

    python benchmarks/retention.py --smoke     # seconds: checks that it runs
    python benchmarks/retention.py --quick     # 10,000 and 100,000 accounts
    python benchmarks/retention.py             # 100,000 and 1,000,000 accounts

``--stores sqlite,postgresql`` chooses the stores (PostgreSQL runs on a
throwaway server when one can start; memory is allowed for the smoke and
quick sizes), ``--json FILE`` writes the figures.  Figures are printed,
never checked.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE)]

from account_merge import Establishment, MergeService  # noqa: E402
from account_merge.domain.account import AccountStatus  # noqa: E402
from account_merge.testing import FakeClock, bulk_load, fast_verifier  # noqa: E402

SCHOOL = Establishment("0860001J", "Collège de démonstration")
SIZES = {"smoke": (2_000, 10_000), "quick": (10_000, 100_000), "full": (100_000, 1_000_000)}


def _fill(storage: Any, size: int, now: datetime) -> int:
    """Fill *storage* with *size* accounts, a tenth of them due; how many are due."""
    password_hash = fast_verifier().hash("2BUYJ9C8")
    due = size // 10
    rest = size - due
    bulk_load(storage, SCHOOL, due, password_hash=password_hash, prefix="old",
              created_at=now - timedelta(days=100))
    bulk_load(storage, SCHOOL, rest // 2, password_hash=password_hash, prefix="new",
              created_at=now)
    bulk_load(storage, SCHOOL, rest - rest // 2, password_hash=password_hash, prefix="act",
              status=AccountStatus.ACTIVE, created_at=now)
    return due


def measure(kind: str, size: int, folder: Path) -> dict[str, Any]:
    """The figures of one store of *size* accounts (run in a process of its own)."""
    from stores import open_stores  # noqa: PLC0415 - the benchmarks' helper

    now = datetime.now(UTC)
    with open_stores(folder, postgres=kind == "postgresql", only={kind}) as stores:
        store_kind = stores.get(kind)
        if store_kind is None:
            return {"skipped": stores.skipped.get(kind, "not available")}
        storage = store_kind.make(f"retention-{size}")
        started = time.perf_counter()
        due = _fill(storage, size, now)
        filled = time.perf_counter() - started
        service = MergeService(storage, fast_verifier(), FakeClock(now))
        started = time.perf_counter()
        dry = service.purge(dry_run=True)
        dry_seconds = time.perf_counter() - started
        started = time.perf_counter()
        report = service.purge()
        seconds = time.perf_counter() - started
        started = time.perf_counter()
        again = service.purge()
        idle = time.perf_counter() - started
    assert dry.accounts == report.accounts == due, (dry, report, due)
    assert again.accounts == 0
    return {"accounts": size, "due": due, "fill_s": round(filled, 2),
            "dry_run_s": round(dry_seconds, 2), "purge_s": round(seconds, 2),
            "deleted_per_s": round(report.accounts / seconds), "idle_purge_s": round(idle, 3),
            "events_deleted_idle": again.events_deleted}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true")
    mode.add_argument("--quick", action="store_true")
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--one", nargs=2, metavar=("STORE", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    folder = args.workdir or Path(tempfile.gettempdir())
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), folder)))
        return 0
    sizes = SIZES["smoke" if args.smoke else "quick" if args.quick else "full"]
    kinds = [k for k in args.stores.split(",") if k]
    if "memory" in kinds and not (args.smoke or args.quick):
        kinds.remove("memory")  # its due accounts are found by a scan: too slow at a million
    figures: dict[str, dict[str, Any]] = {}
    print("P7 retention: purging the never-activated tenth of a store "
          "(figures printed, never checked)")
    for kind in kinds:
        for size in sizes:
            done = subprocess.run(
                [sys.executable, __file__, "--one", kind, str(size), "--workdir", str(folder)],
                capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(done.stderr, file=sys.stderr)
                return done.returncode
            result = json.loads(done.stdout.strip().splitlines()[-1])
            figures[f"{kind}/{size}"] = result
            if "skipped" in result:
                print(f"  {kind:<10} skipped: {result['skipped']}")
                break
            print(f"  {kind:<10} {size:>9,} accounts: {result['due']:>7,} deleted in "
                  f"{result['purge_s']:>7.2f} s ({result['deleted_per_s']:>6,}/s); dry run "
                  f"{result['dry_run_s']:.2f} s; then nothing due: {result['idle_purge_s']:.3f} s "
                  f"(filled in {result['fill_s']:.1f} s)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
