"""A writer for the crash tests: families issued, activated, signed in, merged and split.

Run as ``python sqlite_workload.py PATH SEED``.  It prints ``ready`` once
it has started, then writes to the SQLite file at PATH, forever, until it
is killed.
Each family gets fresh names and child ids, so that successive writers on
the same file never collide.
"""

from __future__ import annotations

import random
import sys
import uuid

from account_merge import Child, MergeService, SQLiteStorage
from account_merge.exceptions import AccountMerged
from account_merge.testing import fast_verifier, make_establishment

SCHOOL = make_establishment(860001, "Collège Jean Moulin")
OTHER_SCHOOL = make_establishment(860002, "Lycée Camille Guérin")
STRONG = "Correct-Horse-Battery-9"


def one_family(service: MergeService, rng: random.Random) -> None:
    """Two or three letters for one family, merged together, sometimes split again."""
    tag = uuid.uuid4().hex[:10]
    first = Child(f"ine-{tag}-1", "Dylan", tag, SCHOOL.uai)
    second = Child(f"ine-{tag}-2", "Florian", tag, OTHER_SCHOOL.uai)
    third = Child(f"ine-{tag}-3", "Léa", tag, SCHOOL.uai)
    a = service.issue_account(SCHOOL, f"Claire {tag}", [first])
    b = service.issue_account(OTHER_SCHOOL, f"Claire {tag}", [second])
    principal = service.activate(a.login, a.provisional_password, STRONG)
    if rng.random() < 0.5:
        service.authenticate(a.login, STRONG)  # a sign-in: one write of its own
    service.merge(principal.id, b.login, b.provisional_password)
    if rng.random() < 0.6:
        # A second parent's account absorbs the first, with the first's password;
        # sometimes it already names a child of the first letter.
        kids = [third, first] if rng.random() < 0.5 else [third]
        c = service.issue_account(SCHOOL, f"Marc {tag}", kids)
        other = service.activate(c.login, c.provisional_password, STRONG)
        service.merge(other.id, a.login, STRONG)
        principal = other
        try:  # the absorbed account's owner tries it: told where it went, nothing written
            service.authenticate(a.login, STRONG)
        except AccountMerged:
            pass
        else:
            raise AssertionError("an absorbed account signed in")
        if rng.random() < 0.5:
            service.authenticate(c.login, STRONG)
        if rng.random() < 0.5 and first not in kids:
            service.split(SCHOOL, principal.id)
    if rng.random() < 0.5:
        service.split(OTHER_SCHOOL, principal.id)


def main(path: str, seed: int) -> None:
    rng = random.Random(seed)
    service = MergeService(SQLiteStorage(path), fast_verifier())
    print("ready", flush=True)
    while True:
        one_family(service, rng)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
