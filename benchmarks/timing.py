"""What the two timing scripts share: a branch timed with the collector off, rounds of every
branch in a shuffled order, and each branch's figures against a reference branch."""

from __future__ import annotations

import gc
import random
import statistics
import time
from collections.abc import Callable

#: The band every ratio should stay in.
BAND = (0.95, 1.05)


def timed(call: Callable[[], object], fails: type[Exception] | None = None) -> float:
    """The seconds *call* takes, the garbage collector off; with *fails*, *call* must raise
    it (a branch that succeeds is a broken measurement)."""
    gc.disable()
    try:
        start = time.perf_counter()
        try:
            call()
        except Exception as error:
            if fails is None or not isinstance(error, fails):
                raise
        else:
            if fails is not None:
                raise AssertionError("the branch did not fail")
        return time.perf_counter() - start
    finally:
        gc.enable()


def measure(calls: dict[str, Callable[[], object]], rounds: int, rng: random.Random, *,
            warmup: int, fails: type[Exception] | None = None) -> list[dict[str, float]]:
    """Every branch once per round, in a shuffled order; *warmup* rounds first, not kept."""
    names = list(calls)
    out = []
    for round_ in range(rounds + warmup):
        rng.shuffle(names)
        times = {name: timed(calls[name], fails) for name in names}
        if round_ >= warmup:
            out.append(times)
    return out


def figures(rounds: list[dict[str, float]], name: str, reference: str
            ) -> tuple[float, float, float]:
    """*name*'s median time, the median over the rounds of its ratio to *reference* in the
    same round, and its median over *reference*'s median."""
    median = statistics.median(r[name] for r in rounds)
    ratio = statistics.median(r[name] / r[reference] for r in rounds)
    return median, ratio, median / statistics.median(r[reference] for r in rounds)


def inside(ratio: float) -> bool:
    """True if *ratio* is within :data:`BAND`."""
    return BAND[0] <= ratio <= BAND[1]
