"""Defect 12.4: Django on SQLite with ATOMIC_REQUESTS under ordinary concurrency.

Eight parents each merge their own letters at the same moment, through the
example ENT's pages, on an SQLite file with ``ATOMIC_REQUESTS``: every
request reads its session first.  In SQLite's default (DEFERRED) mode such
a request holds a read transaction it cannot turn into a write once
another request has written, and most merges failed with
``concurrent_update``; ``manage.py check`` now refuses that set-up
(``account_merge.E002``), and with Django 5.1's ``"transaction_mode":
"IMMEDIATE"`` every merge goes through.  Each run is a process of its own
(``sqlite_atomic_requests.py``), with its own settings.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import django
import pytest

SCENARIO = Path(__file__).resolve().parent / "sqlite_atomic_requests.py"
PARENTS, ROUNDS = 8, 5


def scenario(tmp_path: Path, mode: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(SCENARIO), str(tmp_path / "ent.sqlite3"), mode, str(PARENTS),
         str(ROUNDS)], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.slow
@pytest.mark.skipif(django.VERSION < (5, 1), reason="transaction_mode needs Django 5.1")
def test_with_immediate_transactions_every_parent_merges_every_letter(tmp_path: Path) -> None:
    result = scenario(tmp_path, "IMMEDIATE")
    assert result["checks"] == []
    assert result["problems"] == []
    assert result["merged"] == PARENTS * ROUNDS
    assert result["children"] == [ROUNDS + 1] * PARENTS


@pytest.mark.slow
def test_without_them_check_refuses_the_set_up_that_loses_merges(tmp_path: Path) -> None:
    """The check's reason, shown: in DEFERRED mode concurrent merges fail."""
    result = scenario(tmp_path, "default")
    assert result["checks"] == ["account_merge.E002"]
    assert result["merged"] < PARENTS * ROUNDS
    assert result["problems"]
