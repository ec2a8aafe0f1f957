"""account_merge benchmarks: P1-P5, each figure a ratio measured side by side in one run.

    python benchmarks/run.py            # the full run (10 to 20 minutes on 2 cores)
    python benchmarks/run.py --quick    # smaller stores and fewer rounds (a few minutes)
    python benchmarks/run.py --smoke    # tiny and cheapest hasher: checks that it runs

See benchmarks/README.md and docs/performance.md for what each figure means.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import sqlite3
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE)]

import argon2  # noqa: E402

from concurrency import POSTGRES_SETUPS, SETUPS, P5Result, measure_p5  # noqa: E402
from footprint import P4Result, measure_p4  # noqa: E402
from issuance import P3Result, measure_p3  # noqa: E402
from ops import (  # noqa: E402
    OPERATIONS,
    P1Result,
    P2Result,
    argon2_cost,
    measure_p1,
    measure_p2,
)
from ops import describe as ops_describe  # noqa: E402
from stores import Stores, open_stores  # noqa: E402
from trips import ROUND_TRIP_TARGETS, TripsResult, count_round_trips  # noqa: E402

P3_TARGET = 0.85
P3_MEMORY_TARGET = 0.05
P5_TARGET = 0.85


@dataclass(frozen=True)
class Sizes:
    """How much each part measures."""

    p1_rounds: int
    p1_cheap_rounds: int
    p1_accounts: int
    p2_small: int
    p2_large: int
    p2_rounds: int
    p2_passes: int
    p3_letters: int
    p3_rounds: int
    p3_memory_letters: int
    p3_warm_up: int
    p4_accounts: int
    p5_operations: int
    p5_rounds: int
    argon2: str  # "default" (argon2-cffi's defaults) or "cheapest" (smoke only)


#: The clients of P5.
P5_CLIENTS = 8

SIZES = {
    "full": Sizes(p1_rounds=21, p1_cheap_rounds=61, p1_accounts=1_000, p2_small=1_000,
                  p2_large=1_000_000, p2_rounds=20, p2_passes=3, p3_letters=48, p3_rounds=5,
                  p3_memory_letters=2_000, p3_warm_up=2_000, p4_accounts=10_000,
                  p5_operations=6, p5_rounds=5, argon2="default"),
    "quick": Sizes(p1_rounds=7, p1_cheap_rounds=31, p1_accounts=1_000, p2_small=1_000,
                   p2_large=20_000, p2_rounds=10, p2_passes=3, p3_letters=24, p3_rounds=3,
                   p3_memory_letters=500, p3_warm_up=2_000, p4_accounts=2_000,
                   p5_operations=4, p5_rounds=3, argon2="default"),
    "smoke": Sizes(p1_rounds=2, p1_cheap_rounds=2, p1_accounts=20, p2_small=20, p2_large=200,
                   p2_rounds=2, p2_passes=2, p3_letters=4, p3_rounds=1, p3_memory_letters=10,
                   p3_warm_up=10, p4_accounts=50, p5_operations=2, p5_rounds=1,
                   argon2="cheapest"),
}


def hasher(name: str) -> argon2.PasswordHasher:
    if name == "cheapest":
        return argon2.PasswordHasher.from_parameters(argon2.profiles.CHEAPEST)
    return argon2.PasswordHasher()


def describe(h: argon2.PasswordHasher) -> str:
    return ops_describe(h)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# -- printing -------------------------------------------------------------------------
#: In a smoke run the sizes are too small for the targets to mean anything.
JUDGE = True


def verdict(value: float, target: float | None, *, at_least: bool = False) -> str:
    if target is None:
        return ""
    if not JUDGE:
        return "(smoke)"
    met = value >= target if at_least else value <= target
    return "met" if met else "NOT MET"


def row(*cells: object, widths: tuple[int, ...] = (14, 22, 12, 10, 10, 8)) -> str:
    """The cells, each padded to its width; cells past the widths as they are."""
    padded = [str(c).ljust(w) for c, w in zip(cells, widths, strict=False)]
    padded += [str(c) for c in cells[len(widths):]]
    return "  ".join(padded).rstrip()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def percent(share: float) -> str:
    return f"{share * 100:.2f} %"


def print_p1(results: list[P1Result], cheap: list[P1Result], stores: Stores,
             trips: TripsResult | None) -> dict[str, object]:
    default = results[0].hasher if results else describe(hasher("default"))
    print("\nP1 overhead: what the library adds to the argon2 work an operation does by design")
    print(f"    own = median over rounds of (the operation with argon2's cheapest parameters "
          f"({describe(hasher('cheapest'))})")
    print("          - the argon2 work timed inside that very call): the library's own work")
    print(f"    own cost = own / the median bare verification at the defaults ({default}), "
          "timed in the same store's rounds: the verdict")
    print("    plain = median operation / median of the same argon2 work done bare, timed in "
          "turn, both at the defaults: what a parent feels")
    print("    own CPU = the same as own, in this process's CPU time: without the waits (for "
          "the disk, the server, a core) nor the PostgreSQL server's work")
    widths = (14, 19, 11, 11, 7, 9, 9, 10, 8, 9)
    out: dict[str, object] = {}
    by_store = {result.store: result for result in cheap}
    for result in results:
        kind = stores.get(result.store)
        own_result = by_store.get(result.store)
        assert kind is not None and own_result is not None
        verify = result.median("verify")
        print(f"  {result.store}: bare verify {ms(verify)}, bare hash {ms(result.median('hash'))}; "
              f"{len(result.samples['merge'])} rounds at the defaults, "
              f"{len(own_result.samples['merge'])} with the cheapest")
        print("    " + row("operation", "argon2 work", "median", "bare", "plain", "own",
                           "own cost", "target", "verdict", "own CPU", widths=widths))
        for op in OPERATIONS:
            ratio = result.ratio(op)
            own = own_result.median_own(op)
            share = own / verify
            print("    " + row(op, argon2_cost(op), ms(result.median(op)),
                              ms(result.denominator(op)), f"{ratio:.3f}", ms(own),
                              percent(share), f"<= {percent(kind.p1_target)}",
                              verdict(share, kind.p1_target),
                              ms(own_result.median_own_cpu(op)), widths=widths))
            out[f"{result.store}.{op}"] = {
                "own_cost": share, "target": kind.p1_target, "plain_ratio": ratio,
                "own_s": own, "own_cpu_s": own_result.median_own_cpu(op),
                "median_s": result.median(op), "bare_s": result.denominator(op),
                "bare_verify_s": verify, "cheapest_median_s": own_result.median(op)}
    for name, reason in stores.skipped.items():
        print(f"  {name}: skipped: {reason}")
    if trips is not None:
        out["round_trips"] = print_trips(trips)
    return out


def print_trips(trips: TripsResult) -> dict[str, object]:
    print(f"  {trips.store}: round trips to the server per operation (libpq's trace of one "
          f"connection, after {trips.warm_up} warm-up rounds)")
    widths = (14, 8, 10, 8)
    print("    " + row("operation", "trips", "target", "verdict", "what", widths=widths))
    out: dict[str, object] = {}
    for op, messages in trips.trips.items():
        target = ROUND_TRIP_TARGETS.get(op)
        print("    " + row(op, len(messages), "" if target is None else f"<= {target}",
                           "" if target is None else verdict(len(messages), target),
                           " ".join(messages), widths=widths))
        out[op] = {"round_trips": len(messages), "target": target, "messages": messages}
    return out


def print_p2(results: list[P2Result], stores: Stores, skipped: dict[str, str]) -> dict[str, object]:
    print("\nP2 scale: median operation on a large store / on a small one, side by side "
          "(cheapest argon2, so that the ratio is of the library's own work)")
    widths = (14, 12, 12, 10, 10, 8)
    out: dict[str, object] = {}
    for result in results:
        kind = stores.get(result.store)
        assert kind is not None
        rounds = len(result.passes[-1]["merge"][0])
        print(f"  {result.store}: {result.small:,} vs {result.large:,} accounts "
              f"(filled in {result.fill_seconds:.1f} s, "
              f"{result.large / result.fill_seconds:,.0f} accounts/s); "
              f"{len(result.passes)} passes of {rounds} rounds, ratio = median of the passes'")
        print("    " + row("operation", "small", "large", "ratio", "target", "verdict",
                           "each pass", widths=widths))
        for op in OPERATIONS:
            small, large = result.medians(op)
            ratio = result.ratio(op)
            each = result.pass_ratios(op)
            print("    " + row(op, ms(small), ms(large), f"{ratio:.3f}",
                              f"<= {kind.p2_target:.2f}", verdict(ratio, kind.p2_target),
                              ", ".join(f"{r:.3f}" for r in each), widths=widths))
            out[f"{result.store}.{op}"] = {"ratio": ratio, "pass_ratios": each,
                                           "small_s": small, "large_s": large}
        out[f"{result.store}.fill_accounts_per_s"] = result.large / result.fill_seconds
    for name, reason in skipped.items():
        print(f"  {name}: skipped: {reason}")
    return out


def print_p3(result: P3Result) -> dict[str, object]:
    ratio = result.ratio()
    small, large = result.memory
    share = result.share_held()
    widths = (50, 10, 10, 8)
    print(f"\nP3 bulk issuance: {result.letters} letters with issue_accounts on "
          f"{result.cores} cores ({describe(hasher(result.hasher))}), {len(result.ratios())} "
          f"round(s), each between two runs of every core hashing alone (a process pinned "
          f"to each)")
    print(f"    all cores: {result.rate_all():.2f} letters/s; one core alone: "
          f"{result.rate_one():.2f} hashes/s; ratio per round "
          f"{', '.join(f'{r:.3f}' for r in result.ratios())}")
    print("    " + row("figure", "measured", "target", "verdict", widths=widths))
    print("    " + row(f"letters/s / ({result.cores} x one core's hashes/s)", f"{ratio:.3f}",
                       f">= {P3_TARGET:.2f}", verdict(ratio, P3_TARGET, at_least=True),
                       widths=widths))
    print("    " + row("  CPU per hash alone / CPU per letter issued", f"{result.efficiency():.3f}",
                       widths=widths))
    print("    " + row("  CPU the batch got / (wall time x cores)", f"{result.cpu_share():.3f}",
                       widths=widths))
    print("    " + row(f"heap held per extra letter, {int(large['count'])} vs "
                       f"{int(small['count'])}", f"{share:.3f}", f"<= {P3_MEMORY_TARGET:.2f}",
                       verdict(share, P3_MEMORY_TARGET), widths=widths))
    for run in (small, large):
        print(f"    {int(run['count']):>7} letters (cheapest argon2): heap peak "
              f"{run['heap_peak'] / 1024:,.0f} KiB, RSS growth "
              f"{run['rss_growth'] / 1024:,.0f} KiB, {run['rate']:.0f} letters/s")
    print(f"    growth {result.growth_per_letter():,.0f} B per extra letter; a letter kept "
          f"weighs {result.letter_bytes:,.0f} B (1.0 = the batch held whole)")
    return {"ratio": ratio, "ratios": result.ratios(), "target": P3_TARGET,
            "letters_per_s": result.rate_all(), "one_core_hashes_per_s": result.rate_one(),
            "efficiency": result.efficiency(), "cpu_share": result.cpu_share(),
            "share_held": share, "growth_per_letter": result.growth_per_letter(),
            "letter_bytes": result.letter_bytes, "memory": result.memory}


def print_p4(result: P4Result) -> dict[str, object]:
    print(f"\nP4 footprint: bytes per account, {result.accounts:,} accounts "
          f"(argon2 hash of {result.hash_length} characters)")
    print("    " + row("account", "in memory", "in the SQLite file", widths=(44, 12, 20)))
    labels = {"issued": "issued (with its event and audit record)",
              "bulk": "bulk-loaded (account, credential, child)"}
    for kind, label in labels.items():
        print("    " + row(label, f"{result.memory[kind]:,.0f} B", f"{result.sqlite[kind]:,.0f} B",
                           widths=(44, 12, 20)))
    return asdict(result)


def mib(size: float) -> str:
    return f"{size / 2**20:,.1f} MiB"


def seconds(value: float) -> str:
    return f"{value:.2f} s"


def print_p5(result: P5Result) -> dict[str, object]:
    print(f"\nP5 concurrency: {result.clients} clients at once, each signing in to its own "
          f"parents and merging fresh letters into them ({describe(hasher(result.hasher))}); "
          f"{result.rounds} round(s) of {result.operations} operations per client, each round "
          f"between two phases of the same clients verifying bare (the machine's argon2 "
          f"capacity)")
    print("    ratio = operations/s / verifications/s of the phases around it (one "
          "verification per operation), median over rounds: the verdict")
    print("    per CPU = the same with operations and verifications per CPU second (the "
          "clients' processes, and the PostgreSQL server's): what the CPU share each phase "
          "got does not move")
    print("    memory: the peak resident set of a process during the rounds; bound = "
          "the gate's slots x one verification's memory + the process serving its clients")
    widths = (24, 7, 9, 7, 8, 8, 8, 7, 7, 7, 22, 8)
    print("    " + row("setup", "ops/s", "argon2/s", "ratio", "target", "verdict", "per CPU",
                       "failed", "p50", "p99", "peak / bound", "verdict", widths=widths))
    out: dict[str, object] = {}
    for name, f in result.setups.items():
        failed = int(f["failed"])
        ratio_verdict = verdict(f["ratio"], P5_TARGET, at_least=True)
        if failed and JUDGE:
            ratio_verdict = "NOT MET"
        print("    " + row(
            SETUPS[name], f"{f['operations_per_s']:.2f}", f"{f['capacity_per_s']:.2f}",
            f"{f['ratio']:.3f}", f">= {P5_TARGET:.2f}", ratio_verdict, f"{f['cpu_ratio']:.3f}",
            failed, seconds(f["p50_s"]), seconds(f["p99_s"]),
            f"{mib(f['peak_rss'])} / {mib(f['bound'])}",
            ("met" if f["within_bound"] else "NOT MET") if JUDGE else "(smoke)",
            widths=widths))
        out[name] = {**f, "target": P5_TARGET}
    for name, f in result.setups.items():
        ratios = ", ".join(f"{r:.3f}" for r in f["ratios"])
        per_cpu = ", ".join(f"{r:.3f}" for r in f["cpu_ratios"])
        p99 = ", ".join(f"{op} {v:.2f} s" for op, v in f["p99_by_operation_s"].items())
        print(f"    {SETUPS[name]}: ratio per round {ratios}; per CPU {per_cpu}; CPU share "
              f"{f['cpu_share_workload']:.2f} (operations), {f['cpu_share_capacity']:.2f} "
              f"(bare); p99 {p99}; memory {mib(f['rss_before'])} before + "
              f"{f['serving'] / 1024:,.0f} KiB serving + {f['gate_slots']} x "
              f"{mib(f['verification_bytes'])}; load average {f['load_average']:.2f}")
        if f["failures"]:
            print(f"      failures: {f['failures']}")
    for name, reason in result.skipped.items():
        print(f"    {SETUPS[name]}: skipped: {reason}")
    return out


# -- the run --------------------------------------------------------------------------
def p5_setups(asked: list[str], stores: Stores) -> tuple[list[str], dict[str, str]]:
    """The setups of P5 this run can do, and why not the others."""
    runnable: list[str] = []
    skipped: dict[str, str] = {}
    for name in asked:
        if name not in SETUPS:
            raise SystemExit(f"unknown setup {name!r}; the setups are {', '.join(SETUPS)}")
        extra = ("django" if name.startswith("django") else
                 "flask_sqlalchemy" if name.startswith("flask") else None)
        if name in POSTGRES_SETUPS and stores.postgres is None:
            skipped[name] = stores.postgres_missing
        elif extra is not None and importlib.util.find_spec(extra) is None:
            skipped[name] = f"{extra} is not installed"
        else:
            runnable.append(name)
    return runnable, skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smaller stores, fewer rounds")
    mode.add_argument("--smoke", action="store_true",
                      help="tiny sizes and the cheapest hasher: only checks that it runs")
    parser.add_argument("--only", default="P1,P2,P3,P4,P5", help="parts to run, e.g. P1,P3")
    parser.add_argument("--no-postgres", action="store_true", help="skip PostgreSQL")
    parser.add_argument("--stores", default="memory,sqlite,postgresql",
                        help="stores to run P1 and P2 on, e.g. sqlite,postgresql")
    parser.add_argument("--setups", default=",".join(SETUPS),
                        help="setups P5 runs, e.g. sqlite-threads,postgresql")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where to put the store files (default: the temporary folder)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    size_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    sizes = SIZES[size_name]
    global JUDGE  # noqa: PLW0603
    JUDGE = size_name != "smoke"
    parts = {p.strip().upper() for p in args.only.split(",")}

    load = os.getloadavg()
    print(f"account_merge benchmarks ({size_name}): {len(os.sched_getaffinity(0))} cores "
          f"({os.cpu_count()} online), {cpu_model()}, Python {platform.python_version()}, "
          f"SQLite {sqlite3.sqlite_version}, "
          f"argon2-cffi {importlib.metadata.version('argon2-cffi')}, "
          f"load average {load[0]:.2f}")
    figures: dict[str, object] = {"mode": size_name, "load_average_at_start": load[0]}
    started = time.perf_counter()
    wanted = {name.strip().lower() for name in args.stores.split(",")}
    setups = [name.strip().lower() for name in args.setups.split(",")]
    postgres = not args.no_postgres and (
        ("postgresql" in wanted and parts & {"P1", "P2"})
        or ("P5" in parts and POSTGRES_SETUPS & set(setups)))
    with open_stores(args.workdir, postgres=bool(postgres), only=wanted) as stores:
        if stores.postgres is not None:
            print(f"PostgreSQL: {stores.postgres.version}, a throwaway server on a Unix socket, "
                  f"fsync and synchronous_commit on")
        if "P1" in parts:
            default = hasher(sizes.argon2)
            cheap = [measure_p1(kind.make("p1-cheap"), kind.name, hasher("cheapest"),
                                sizes.p1_cheap_rounds, sizes.p1_accounts)
                     for kind in stores.kinds]
            results = [measure_p1(kind.make("p1"), kind.name, default, sizes.p1_rounds,
                                  sizes.p1_accounts) for kind in stores.kinds]
            trips = (count_round_trips(stores.postgres.database("p1-trips"), hasher("cheapest"))
                     if stores.postgres is not None and stores.get("postgresql") else None)
            figures["P1"] = print_p1(results, cheap, stores, trips)
            for kind in stores.kinds:
                kind.close_all()
        if "P2" in parts:
            p2 = []
            for kind in stores.kinds:
                if kind.p2_target is None:
                    continue
                p2.append(measure_p2(kind.make("p2-small"), kind.make("p2-large"), kind.name,
                                     hasher("cheapest"), sizes.p2_rounds, sizes.p2_small,
                                     sizes.p2_large, sizes.p2_passes))
                kind.close_all()
            figures["P2"] = print_p2(p2, stores, stores.skipped)
        if "P3" in parts:
            p3 = measure_p3(stores.workdir, sizes.argon2, sizes.p3_letters, sizes.p3_rounds,
                            sizes.p3_memory_letters, "cheapest", sizes.p3_warm_up)
            figures["P3"] = print_p3(p3)
        if "P4" in parts:
            figures["P4"] = print_p4(measure_p4(stores.workdir, sizes.p4_accounts))
        if "P5" in parts:
            runnable, skipped = p5_setups(setups, stores)
            server = stores.postgres
            p5 = measure_p5(stores.workdir, runnable,
                            lambda name: server.database(f"p5_{name}") if server else None,
                            skipped, clients=P5_CLIENTS, operations=sizes.p5_operations,
                            rounds=sizes.p5_rounds, hasher=sizes.argon2,
                            server_pid=server.pid if server else None)
            figures["P5"] = print_p5(p5)
    elapsed = time.perf_counter() - started
    print(f"\n{size_name} run: {elapsed:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
