"""How long each failure branch of merge, activate and authenticate takes.

Rule I7 (and OWASP ASVS 5.0 6.3.8) says that a failed credential check
must not tell, by its duration, why it failed.  This script times every
failure branch (unknown login, absorbed account, expired or used
provisional password, malformed stored hash, a password that cannot be
encoded...) against "wrong password" and prints the ratio of the medians;
they should sit within 0.95-1.05.  It is a measurement, not a test: run it
on a quiet machine.

    python benchmarks/timing_uniformity.py            # argon2-cffi's defaults
    python benchmarks/timing_uniformity.py --quick    # cheaper parameters, a quick look

``--check`` exits with status 1 when a ratio leaves the band.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import argon2
import attrs

from account_merge import (
    Argon2Verifier,
    Child,
    InMemoryStorage,
    MergeService,
    NotificationLetter,
    SQLiteStorage,
)
from account_merge.domain.logins import login_key
from account_merge.domain.throttle import ThrottlePolicy
from account_merge.exceptions import InvalidCredentials
from account_merge.ports import ChangeSet, Fetch, Storage
from account_merge.testing import FakeClock, make_establishment
from timing import BAND, figures, inside, measure

SCHOOL = make_establishment(860001, "Collège Jean Moulin")
STRONG = "Mot-de-passe-Sûr-2026"
OTHER = "Autre-Mot-de-passe-2027"
NEW = "Nouvelle-Clé-Verte-2028"
WRONG = "WRONG234"
#: Throttling would turn most attempts into too_many_attempts; the timing is about the rest.
NO_THROTTLE = ThrottlePolicy(backoff_after=10**6, lock_after=10**6,
                             principal_per_hour=10**6, principal_per_day=10**6)


def branches(storage: Storage, verifier: Argon2Verifier
             ) -> dict[str, dict[str, Callable[[], object]]]:
    """For each operation, one failing call per branch, on accounts made for it."""
    clock = FakeClock()
    service = MergeService(storage, verifier, clock, throttle=NO_THROTTLE)
    count = iter(range(10**6))

    def issue() -> NotificationLetter:
        n = next(count)
        return service.issue_account(SCHOOL, f"Parent Numéro {n}",
                                     [Child(f"ine-{n}", "Enfant", "Robert", SCHOOL.uai)])

    def activate(letter: NotificationLetter, password: str) -> str:
        return service.activate(letter.login, letter.provisional_password, password).login

    def break_hash(login: str, garbage: str) -> None:
        key = login_key(login)
        with storage.unit_of_work(write=False) as uow:
            credential = uow.fetch(Fetch(logins=(key,))).by_login[key].credential
        assert credential is not None
        storage.write(ChangeSet(credentials=(attrs.evolve(credential, password_hash=garbage),)))

    expired = issue()
    clock.advance(days=91)
    first = issue()
    principal = service.activate(first.login, first.provisional_password, STRONG)
    wrong, surrogate, absorbed, used = issue(), issue(), issue(), issue()
    activate(used, OTHER)
    garbage, odd = issue(), issue()
    active = activate(issue(), OTHER)
    active_absorbed = activate(issue(), OTHER)
    active_garbage = activate(issue(), OTHER)
    service.merge(principal.id, absorbed.login, absorbed.provisional_password)
    service.merge(principal.id, active_absorbed, OTHER)
    break_hash(garbage.login, "not an argon2 hash")
    break_hash(odd.login, "$argon2id$v=19$m=8,t=1,p=1$sél$hâché")
    break_hash(active_garbage, "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi")

    def secret(letter: NotificationLetter) -> str:
        return letter.provisional_password.reveal()

    letters = {
        "wrong password": (wrong.login, WRONG),
        "unknown login": ("nobody.here", secret(wrong)),
        "absorbed account": (absorbed.login, secret(absorbed)),
        "expired provisional": (expired.login, secret(expired)),
        "used provisional": (used.login, secret(used)),
        "malformed stored hash": (garbage.login, secret(garbage)),
        "non-ASCII stored hash": (odd.login, secret(odd)),
        "lone surrogate": (surrogate.login, "\ud800"),
    }
    passwords = {
        "wrong password": (active, WRONG),
        "unknown login": ("nobody.here", OTHER),
        "absorbed account": (active_absorbed, OTHER),
        "provisional account": (wrong.login, secret(wrong)),
        "malformed stored hash": (active_garbage, OTHER),
        "lone surrogate": (active, "\ud800"),
    }
    def merging(login: str, password: str) -> Callable[[], object]:
        return lambda: service.merge(principal.id, login, password)

    def activating(login: str, password: str) -> Callable[[], object]:
        return lambda: service.activate(login, password, NEW)

    def signing_in(login: str, password: str) -> Callable[[], object]:
        return lambda: service.authenticate(login, password)

    merge = {name: merging(*args) for name, args in letters.items()}
    merge.update({f"{name} (activated)": merging(*args) for name, args in passwords.items()
                  if name != "provisional account"})  # that one is a letter: it merges
    return {
        "merge": merge,
        "activate": {name: activating(*args) for name, args in letters.items()},
        # An absorbed account's or a letter's right password is answered once proven
        # (account_merged, activation_required): sign-in times them with a wrong one.
        "authenticate": {
            **{name: signing_in(*args) for name, args in passwords.items()
               if name not in ("absorbed account", "provisional account")},
            "absorbed account, wrong password": signing_in(active_absorbed, WRONG),
            "provisional account, wrong password": signing_in(wrong.login, WRONG),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="cheaper argon2 parameters (8 MiB, 1 pass, 1 lane)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="timed calls per branch (default 20, or 60 with --quick)")
    parser.add_argument("--store", choices=["memory", "sqlite"], default="memory")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--check", action="store_true",
                        help=f"exit with status 1 if a ratio leaves {BAND[0]}-{BAND[1]}")
    options = parser.parse_args(argv)
    hasher = (argon2.PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)
              if options.quick else argon2.PasswordHasher())
    rounds = options.rounds or (60 if options.quick else 20)
    verifier = Argon2Verifier(hasher, warn_if_weak=False)
    with tempfile.TemporaryDirectory() as folder:
        storage: Storage = (SQLiteStorage(Path(folder) / "timing.sqlite3")
                            if options.store == "sqlite" else InMemoryStorage())
        operations = branches(storage, verifier)
        print(f"argon2: memory_cost={hasher.memory_cost} KiB, time_cost={hasher.time_cost}, "
              f"parallelism={hasher.parallelism}; store: {options.store}; rounds: {rounds}; "
              f"Python {platform.python_version()} on {platform.machine()}, "
              f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}", flush=True)
        print("ratio: median over the rounds of (branch / 'wrong password' of the same "
              "round); medians: median of each branch's own times / that of 'wrong password'",
              flush=True)
        print(f"{'operation':<13}{'branch':<38}{'median ms':>10}{'ratio':>8}{'medians':>9}",
              flush=True)
        outside = []
        rng = random.Random(options.seed)
        for operation, calls in operations.items():
            rounds_ = measure(calls, rounds, rng, warmup=2, fails=InvalidCredentials)
            for name in sorted(calls):
                median, ratio, medians = figures(rounds_, name, "wrong password")
                flag = "" if inside(ratio) else "  <- outside"
                if flag:
                    outside.append((operation, name, ratio))
                print(f"{operation:<13}{name:<38}{median * 1000:>10.2f}{ratio:>8.3f}"
                      f"{medians:>9.3f}{flag}", flush=True)
        storage.close()
    if outside:
        print(f"{len(outside)} ratio(s) outside {BAND[0]}-{BAND[1]}")
    return 1 if options.check and outside else 0


if __name__ == "__main__":
    sys.exit(main())
