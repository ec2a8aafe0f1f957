"""account_merge benchmarks: P1-P4, each figure a ratio measured side by side in one run.

    python benchmarks/run.py            # the full run (10 to 20 minutes on 2 cores)
    python benchmarks/run.py --quick    # smaller stores and fewer rounds (a few minutes)
    python benchmarks/run.py --smoke    # tiny and cheapest hasher: checks that it runs

See benchmarks/README.md and docs/performance.md for what each figure means.
"""

from __future__ import annotations

import argparse
import importlib.metadata
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

from footprint import P4Result, measure_p4  # noqa: E402
from issuance import P3Result, measure_p3  # noqa: E402
from ops import OPERATIONS, P1Result, P2Result, argon2_cost, measure_p1, measure_p2  # noqa: E402
from stores import Stores, open_stores  # noqa: E402

P3_TARGET = 0.85
P3_MEMORY_TARGET = 0.05


@dataclass(frozen=True)
class Sizes:
    """How much each part measures."""

    p1_rounds: int
    p1_accounts: int
    p2_small: int
    p2_large: int
    p2_rounds: int
    p3_letters: int
    p3_rounds: int
    p3_memory_letters: int
    p3_warm_up: int
    p4_accounts: int
    argon2: str  # "default" (argon2-cffi's defaults) or "cheapest" (smoke only)


SIZES = {
    "full": Sizes(p1_rounds=21, p1_accounts=1_000, p2_small=1_000, p2_large=1_000_000,
                  p2_rounds=30, p3_letters=48, p3_rounds=5, p3_memory_letters=2_000,
                  p3_warm_up=2_000, p4_accounts=10_000, argon2="default"),
    "quick": Sizes(p1_rounds=7, p1_accounts=1_000, p2_small=1_000, p2_large=20_000,
                   p2_rounds=15, p3_letters=24, p3_rounds=3, p3_memory_letters=500,
                   p3_warm_up=2_000, p4_accounts=2_000, argon2="default"),
    "smoke": Sizes(p1_rounds=2, p1_accounts=20, p2_small=20, p2_large=200, p2_rounds=2,
                   p3_letters=4, p3_rounds=1, p3_memory_letters=10, p3_warm_up=10, p4_accounts=50,
                   argon2="cheapest"),
}


def hasher(name: str) -> argon2.PasswordHasher:
    if name == "cheapest":
        return argon2.PasswordHasher.from_parameters(argon2.profiles.CHEAPEST)
    return argon2.PasswordHasher()


def describe(h: argon2.PasswordHasher) -> str:
    return f"argon2id t={h.time_cost} m={h.memory_cost} KiB p={h.parallelism}"


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
    return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=False)).rstrip()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def print_p1(results: list[P1Result], cheap: list[P1Result], stores: Stores,
             argon2_name: str) -> dict[str, object]:
    print(f"\nP1 overhead: an operation / the argon2 work it does by design "
          f"({describe(hasher(argon2_name))})")
    print("    ratio = median operation / median of the same work done bare, timed in turn;")
    print("    in situ = median over rounds of the operation / the argon2 work timed inside it")
    print("    (the verdict: the machine's drift and argon2's own scatter cancel out of it)")
    widths = (14, 19, 11, 11, 8, 9, 8, 8)
    out: dict[str, object] = {}
    for result in results:
        kind = stores.get(result.store)
        assert kind is not None
        print(f"  {result.store}: bare verify {ms(result.median('verify'))}, "
              f"bare hash {ms(result.median('hash'))}, {len(result.samples['merge'])} rounds")
        print("    " + row("operation", "argon2 work", "median", "bare", "ratio", "in situ",
                           "target", "verdict", widths=widths))
        for op in OPERATIONS:
            ratio, in_situ = result.ratio(op), result.in_situ_ratio(op)
            print("    " + row(op, argon2_cost(op), ms(result.median(op)),
                              ms(result.denominator(op)), f"{ratio:.3f}", f"{in_situ:.4f}",
                              f"<= {kind.p1_target:.2f}", verdict(in_situ, kind.p1_target),
                              widths=widths))
            out[f"{result.store}.{op}"] = {
                "ratio": ratio, "in_situ": in_situ, "target": kind.p1_target,
                "median_s": result.median(op), "bare_s": result.denominator(op)}
    for name, reason in stores.skipped.items():
        print(f"  {name}: skipped: {reason}")
    print("\n  The library's own cost: the same operations with argon2's cheapest parameters "
          f"({describe(hasher('cheapest'))});")
    print("  own = median of (operation - the argon2 work timed inside it)")
    cheap_widths = (14, 14, 12, 12, 12)
    print("    " + row("store", "operation", "median", "argon2", "own", widths=cheap_widths))
    for result in cheap:
        for op in OPERATIONS:
            own = result.median_own(op)
            print("    " + row(result.store, op, ms(result.median(op)),
                              ms(result.median(op) - own), ms(own), widths=cheap_widths))
            out[f"{result.store}.{op}.cheapest"] = {"median_s": result.median(op),
                                                    "own_s": own}
    return out


def print_p2(results: list[P2Result], stores: Stores, skipped: dict[str, str]) -> dict[str, object]:
    print("\nP2 scale: median operation on a large store / on a small one, side by side "
          "(cheapest argon2, so that the ratio is of the library's own work)")
    out: dict[str, object] = {}
    for result in results:
        kind = stores.get(result.store)
        assert kind is not None
        print(f"  {result.store}: {result.small:,} vs {result.large:,} accounts "
              f"(filled in {result.fill_seconds:.1f} s, "
              f"{result.large / result.fill_seconds:,.0f} accounts/s)")
        print("    " + row("operation", "small", "large", "ratio", "target", "verdict",
                           widths=(14, 12, 12, 10, 10, 8)))
        for op in OPERATIONS:
            small, large = result.medians(op)
            ratio = result.ratio(op)
            print("    " + row(op, ms(small), ms(large), f"{ratio:.3f}",
                              f"<= {kind.p2_target:.2f}", verdict(ratio, kind.p2_target),
                              widths=(14, 12, 12, 10, 10, 8)))
            out[f"{result.store}.{op}"] = {"ratio": ratio, "small_s": small, "large_s": large}
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


# -- the run --------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smaller stores, fewer rounds")
    mode.add_argument("--smoke", action="store_true",
                      help="tiny sizes and the cheapest hasher: only checks that it runs")
    parser.add_argument("--only", default="P1,P2,P3,P4", help="parts to run, e.g. P1,P3")
    parser.add_argument("--no-postgres", action="store_true", help="skip PostgreSQL")
    parser.add_argument("--stores", default="memory,sqlite,postgresql",
                        help="stores to run P1 and P2 on, e.g. sqlite,postgresql")
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
    postgres = not args.no_postgres and "postgresql" in wanted
    with open_stores(args.workdir, postgres=postgres, only=wanted) as stores:
        if "P1" in parts:
            default = hasher(sizes.argon2)
            cheap = [measure_p1(kind.make("p1-cheap"), kind.name, hasher("cheapest"),
                                max(sizes.p1_rounds, 15), sizes.p1_accounts)
                     for kind in stores.kinds]
            results = [measure_p1(kind.make("p1"), kind.name, default, sizes.p1_rounds,
                                  sizes.p1_accounts) for kind in stores.kinds]
            figures["P1"] = print_p1(results, cheap, stores, sizes.argon2)
            for kind in stores.kinds:
                kind.close_all()
        if "P2" in parts:
            p2 = []
            for kind in stores.kinds:
                if kind.p2_target is None:
                    continue
                p2.append(measure_p2(kind.make("p2-small"), kind.make("p2-large"), kind.name,
                                     hasher("cheapest"), sizes.p2_rounds, sizes.p2_small,
                                     sizes.p2_large))
                kind.close_all()
            figures["P2"] = print_p2(p2, stores, stores.skipped)
        if "P3" in parts:
            p3 = measure_p3(stores.workdir, sizes.argon2, sizes.p3_letters, sizes.p3_rounds,
                            sizes.p3_memory_letters, "cheapest", sizes.p3_warm_up)
            figures["P3"] = print_p3(p3)
        if "P4" in parts:
            figures["P4"] = print_p4(measure_p4(stores.workdir, sizes.p4_accounts))
    elapsed = time.perf_counter() - started
    print(f"\n{size_name} run: {elapsed:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
