"""How long each branch of a recovery request takes (« mot de passe oublié ? », etc.).

A request must not tell, by its duration, whether the login or address
belongs to an account that may be reset, to another account, or to
nobody (OWASP Forgot Password Cheat Sheet: "consistent amount of time";
ASVS 5.0 6.3.8).  This script times every branch of
``request_password_reset`` and ``request_login_reminder`` against the
branch that finds a resettable account, every branch once per round in a
shuffled order, and prints the median over the rounds of each branch's
time divided by the reference's time in the same round; they should sit
within 0.95-1.05.  No password is hashed in a request, so a call takes
well under a millisecond in memory: many rounds are needed.  It is a
measurement, not a test: run it on a quiet machine.

    python benchmarks/timing_recovery.py                 # in memory, 2000 rounds
    python benchmarks/timing_recovery.py --store sqlite  # on an SQLite file

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

from account_merge import Child, InMemoryStorage, MergeService, SQLiteStorage
from account_merge.domain.notices import NoticeKind
from account_merge.domain.throttle import ThrottlePolicy
from account_merge.ports import Storage
from account_merge.testing import CapturingMailer, FakeClock, fast_verifier, make_establishment
from timing import BAND, figures, inside, measure

SCHOOL = make_establishment(860001, "Collège Jean Moulin")
STRONG = "Mot-de-passe-Sûr-2026"
OTHER = "Autre-Mot-de-passe-2027"
#: Throttling would drop most requests; the timing is about the rest.
NO_THROTTLE = ThrottlePolicy(recovery_per_hour=10**9, recovery_client_per_hour=10**9)
LINKS = {"password_reset": "https://ent.example/mot-de-passe/{token}",
         "email_verification": "https://ent.example/courriel/{token}"}


def branches(storage: Storage) -> dict[str, dict[str, Callable[[], object]]]:
    """For each request, one call per branch, on accounts made for it (the first: reference)."""
    service = MergeService(storage, fast_verifier(), FakeClock(), throttle=NO_THROTTLE,
                           secret_key="a benchmark secret key", links=LINKS)
    mailer = CapturingMailer()
    count = iter(range(10**6))

    def active(email: str | None, password: str = STRONG) -> str:
        n = next(count)
        letter = service.issue_account(SCHOOL, f"Parent Numéro {n}",
                                       [Child(f"ine-{n}", "Enfant", "Robert", SCHOOL.uai)])
        service.activate(letter.login, letter.provisional_password, password, email=email)
        if email is not None:
            service.deliver_notices(mailer)
            url = mailer.last(NoticeKind.EMAIL_VERIFICATION).url
            assert url is not None
            service.confirm_email(url.rsplit("/", 1)[1])
        return letter.login

    resettable = active("claire@example.org")
    no_address = active(None)
    n = next(count)
    provisional = service.issue_account(SCHOOL, "Paul Robert",
                                        [Child(f"ine-{n}", "Enfant", "Robert", SCHOOL.uai)],
                                        email="paul@example.org").login
    absorbed = active("lea@example.org", OTHER)
    service.merge(service.find_account(resettable).id, absorbed, OTHER)
    identifiers = {
        "resettable (login)": resettable, "resettable (address)": "claire@example.org",
        "unknown login": "nobody.here", "unknown address": "nobody@example.org",
        "never activated": provisional, "address given by the school": "paul@example.org",
        "no address": no_address, "absorbed (login)": absorbed,
        "absorbed (address)": "lea@example.org",
    }
    addresses = {"resettable (address)": "claire@example.org",
                 "unknown address": "nobody@example.org",
                 "address given by the school": "paul@example.org",
                 "absorbed (address)": "lea@example.org"}

    def reset(typed: str) -> Callable[[], object]:
        return lambda: service.request_password_reset(typed)

    def remind(typed: str) -> Callable[[], object]:
        return lambda: service.request_login_reminder(typed)

    return {"password reset": {k: reset(v) for k, v in identifiers.items()},
            "login reminder": {k: remind(v) for k, v in addresses.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2000, help="timed calls per branch")
    parser.add_argument("--store", choices=["memory", "sqlite"], default="memory")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--check", action="store_true",
                        help=f"exit with status 1 if a ratio leaves {BAND[0]}-{BAND[1]}")
    options = parser.parse_args(argv)
    outside = []
    with tempfile.TemporaryDirectory() as folder:
        storage: Storage = (SQLiteStorage(Path(folder) / "timing.sqlite3")
                            if options.store == "sqlite" else InMemoryStorage())
        operations = branches(storage)
        print(f"store: {options.store}; rounds: {options.rounds}; Python "
              f"{platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs; "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)
        print("ratio: median over the rounds of (branch / the first branch of the same round); "
              "medians: median of each branch's own times / that of the first", flush=True)
        print(f"{'request':<16}{'branch':<32}{'median µs':>10}{'ratio':>8}{'medians':>9}",
              flush=True)
        rng = random.Random(options.seed)
        for operation, calls in operations.items():
            rounds = measure(calls, options.rounds, rng, warmup=20)
            first = next(iter(calls))
            for name in calls:
                median, ratio, medians = figures(rounds, name, first)
                flag = "" if inside(ratio) else "  <- outside"
                if flag:
                    outside.append((operation, name, ratio))
                print(f"{operation:<16}{name:<32}{median * 1e6:>10.1f}{ratio:>8.3f}"
                      f"{medians:>9.3f}{flag}", flush=True)
        storage.close()
    if outside:
        print(f"{len(outside)} ratio(s) outside {BAND[0]}-{BAND[1]}")
    return 1 if options.check and outside else 0


if __name__ == "__main__":
    sys.exit(main())
