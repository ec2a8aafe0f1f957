"""A process that dies between the attempts journal and the database (for the crash tests).

With SQLAlchemyStorage in engine mode on the SQLite file DATABASE (each
step commits the journal, then the database):

- ``attempts_workload.py DATABASE merge PRINCIPAL LOGIN`` (the letter's
  password on standard input): the merge, with the right password; the
  process dies right after the journal's commit of the merge's last step
  (the attempt given back), before the database's;
- ``attempts_workload.py DATABASE failure LOGIN``: a wrong sign-in; the
  process dies right after the journal's commit of the count, before the
  audit record of the failure;
- ``attempts_workload.py DATABASE hammer LOGIN SEED``: forever, wrong
  sign-ins at LOGIN (``answered`` printed after each answer) between
  merges of new families (``merged`` after each), until it is killed.

Every mode prints ``ready`` first, then JSON lines of what it did.
"""

from __future__ import annotations

import json
import os
import random
import sys
import uuid

import sqlalchemy

from account_merge import Child, MergeService, ThrottlePolicy
from account_merge.exceptions import InvalidCredentials
from account_merge.storage.attempts import JournalTransaction
from account_merge.storage.sqlalchemy import SQLAlchemyStorage
from account_merge.testing import fast_verifier, make_establishment

SCHOOL = make_establishment(860001, "Collège Jean Moulin")
STRONG = "Correct-Horse-Battery-9"
CRASHED = 17
#: No back-off in the hammer: every wrong attempt is answered.
GENEROUS = ThrottlePolicy(backoff_after=10**6, lock_after=10**6, principal_per_hour=10**6,
                          principal_per_day=10**6)


def say(**what: object) -> None:
    print(json.dumps(what), flush=True)


def die_after_journal_commit(number: int) -> None:
    """From now on, the process ends right after the *number*-th commit of the journal."""
    real = JournalTransaction.commit
    commits = [0]

    def commit(self: JournalTransaction) -> None:
        real(self)
        commits[0] += 1
        if commits[0] == number:
            os._exit(CRASHED)

    JournalTransaction.commit = commit  # type: ignore[method-assign]


def family(service: MergeService, tag: str) -> tuple[str, str, str]:
    """An activated principal and a letter to merge: (principal id, login, password)."""
    first = service.issue_account(SCHOOL, f"Claire {tag}",
                                  [Child(f"ine-{tag}-1", "Dylan", tag, SCHOOL.uai)])
    second = service.issue_account(SCHOOL, f"Claire {tag}",
                                   [Child(f"ine-{tag}-2", "Florian", tag, SCHOOL.uai)])
    principal = service.activate(first.login, first.provisional_password, STRONG)
    return principal.id, second.login, second.provisional_password.reveal()


def main(database: str, mode: str, *args: str) -> None:
    engine = sqlalchemy.create_engine(f"sqlite:///{database}", connect_args={"timeout": 30})
    storage = SQLAlchemyStorage(engine)
    service = MergeService(storage, fast_verifier(), throttle=GENEROUS)
    say(event="ready")
    if mode == "merge":
        principal_id, login = args
        password = sys.stdin.readline().strip()
        die_after_journal_commit(2)  # step 1's count, then step 3's give-back
        service.merge(principal_id, login, password)
        say(event="survived")
    elif mode == "failure":
        (login,) = args
        die_after_journal_commit(1)  # the count
        try:
            service.authenticate(login, "WRONG-PASSWORD")
        except InvalidCredentials:
            say(event="answered")
    elif mode == "hammer":
        login, seed = args
        rng = random.Random(int(seed))
        while True:
            if rng.random() < 0.7:
                try:
                    service.authenticate(login, f"WRONG-{rng.random()}")
                except InvalidCredentials:
                    say(event="answered")
            else:
                principal_id, other, password = family(service, uuid.uuid4().hex[:8])
                service.merge(principal_id, other, password)
                say(event="merged", principal=principal_id)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(*sys.argv[1:])
