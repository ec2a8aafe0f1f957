"""Parents merging at the same moment, on SQLite with ATOMIC_REQUESTS (run in a process of its own).

``python sqlite_atomic_requests.py FILE MODE PARENTS ROUNDS`` makes a
project of the example ENT on the SQLite file FILE, with
``ATOMIC_REQUESTS`` and the transaction mode MODE (``IMMEDIATE``, or
``default`` for none), issues each of PARENTS parents one letter per
round plus the principal's, then runs one thread per parent that signs in
and merges one letter per round through the pages, with Django's test
client: every request reads its session first, then writes.  It prints
one JSON object: the ids of the system checks that failed, how many
merges went through, and the messages of those that did not.

The example leaves its views that check a password out of the request
transaction (``views.PASSWORD_VIEWS``); here they run in it, as every
view of a project that does not do so.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
for folder in (HERE, HERE.parents[1] / "examples" / "django_app"):
    sys.path.insert(0, str(folder))

STRONG = "Correct-Horse-Battery-9"


def configure(database: Path, mode: str) -> None:
    import django
    import django_test_settings as base
    from django.conf import settings

    options: dict[str, Any] = {"timeout": 30}
    if mode != "default":
        options["transaction_mode"] = mode
    names = [name for name in dir(base) if name.isupper() and name != "DATABASES"]
    settings.configure(
        **{name: getattr(base, name) for name in names},
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(database),
                               "ATOMIC_REQUESTS": True, "OPTIONS": options}},
    )
    django.setup()


def run(parents: int, rounds: int) -> dict[str, Any]:
    from django.core import checks
    from django.core.management import call_command
    from django.db import connections
    from django.test import Client
    from django.urls import reverse
    from ent_example import views

    from account_merge import Child
    from account_merge.contrib.django import get_service
    from account_merge.testing import make_establishment

    for name in views.PASSWORD_VIEWS:  # every request in its transaction
        getattr(views, name)._non_atomic_requests = set()
    failed_checks = sorted(m.id for m in checks.run_checks()
                           if m.id and m.id.startswith("account_merge"))
    call_command("migrate", verbosity=0)
    college = make_establishment(860001, "Collège Jean Moulin")
    service = get_service()
    families = []
    for p in range(parents):
        letters = [service.issue_account(college, f"Parent{p} Famille{p}",
                                         [Child(f"ine-{p}-{r}", f"Enfant{r}", f"Famille{p}",
                                                college.uai)])
                   for r in range(rounds + 1)]
        service.activate(letters[0].login, letters[0].provisional_password, STRONG)
        families.append(letters)
    connections.close_all()

    merged: list[int] = []
    problems: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(parents)

    def parent(p: int) -> None:
        client = Client()
        principal, *others = families[p]
        try:
            barrier.wait()
            signed_in = client.post(reverse("ent:connexion"),
                                    {"login": principal.login, "password": STRONG})
            if signed_in.status_code != 302:
                with lock:
                    problems.append(f"parent {p}: sign-in {signed_in.status_code}")
                return
            for letter in others:
                form = client.get(reverse("ent:regrouper")).content.decode()
                found = re.search(r'name="request_id" value="(\w+)"', form)
                if found is None:
                    with lock:
                        problems.append(f"parent {p}: no merge form")
                    continue
                response = client.post(reverse("ent:regrouper"), {
                    "login": letter.login, "password": letter.provisional_password.reveal(),
                    "request_id": found.group(1)})
                with lock:
                    if response.status_code == 302:
                        merged.append(p)
                    else:
                        error = re.search(r'role="alert">\s*<p>([^<]*)</p>',
                                          response.content.decode())
                        problems.append(f"parent {p}: {error.group(1) if error else response}")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=parent, args=(p,)) for p in range(parents)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    children = sorted(len(service.children(letters[0].account_id)) for letters in families)
    return {"checks": failed_checks, "merged": len(merged), "problems": problems,
            "children": children}


if __name__ == "__main__":
    file, mode, parents, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    configure(Path(file), mode)
    print(json.dumps(run(parents, rounds)))
