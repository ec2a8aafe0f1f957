"""account-merge purge and export, run for real on SQLite files.

The accounts are made through the library with a clock set 100 days
back, so that their letters are past their time when the command runs.
"""

from __future__ import annotations

import io
import json
import stat
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import account_merge.cli.session as cli_session
from account_merge import Child, MergeService, SQLiteStorage
from account_merge.cli import main
from account_merge.testing import FakeClock, fast_verifier, make_establishment

SCHOOL = make_establishment(869999, "Collège des Trois Rivières")


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "ent.sqlite3"
    monkeypatch.setenv("ACCOUNT_MERGE_DB", str(path))
    monkeypatch.setattr(cli_session, "make_verifier", fast_verifier)
    return path


def fill(db: Path, *, days_ago: int = 100) -> tuple[str, str]:
    """A letter never used and an activated account, made *days_ago*; their logins."""
    storage = SQLiteStorage(db)
    service = MergeService(storage, fast_verifier(),
                           FakeClock(datetime.now(UTC) - timedelta(days=days_ago)))
    service.register_establishment(SCHOOL)
    never = service.issue_account(SCHOOL, "Paul Martin",
                                  [Child("ine-1", "Tom", "Martin", SCHOOL.uai)])
    used = service.issue_account(SCHOOL, "Claire Robert",
                                 [Child("ine-2", "Dylan", "Robert", SCHOOL.uai)])
    service.activate(used.login, used.provisional_password, "Un-Mot-De-Passe-42!")
    storage.close()
    return never.login, used.login


def run(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_purge_says_what_it_would_delete_then_deletes_it_once(
        db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    never, used = fill(db)
    code, out, _ = run("purge", "--dry-run", capsys=capsys)
    assert code == 0
    assert out.startswith("Simulation, rien n'a été supprimé")
    assert "comptes\xa0: 1 (jamais activés 1," in out
    assert run("children", never, capsys=capsys)[0] == 0  # still there
    code, out, _ = run("purge", capsys=capsys)
    assert (code, out.splitlines()[0]) == (0, "Purge effectuée\xa0:")
    assert "comptes\xa0: 1 (jamais activés 1," in out
    code, _, err = run("children", never, capsys=capsys)
    assert (code, err.strip().endswith("(account_not_found)")) == (1, True)
    assert run("children", used, capsys=capsys)[0] == 0
    again = run("purge", capsys=capsys)[1]
    assert "comptes\xa0: 0 (" in again and "événements\xa0: 0" in again


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_purge_at_a_terminal_shows_a_progress_bar(
        db: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    fill(db)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["--lang", "en", "purge"]) == 0
    bar = terminal.getvalue().split("\r")[-1]
    assert bar.startswith("Purge [") and bar.endswith("\n")
    done, total = bar.split()[-1].split("/")
    assert done == total != "0"
    assert capsys.readouterr().out.startswith("Purge done:")


def test_export_writes_the_accounts_data_for_its_owner_only(
        db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, used = fill(db, days_ago=1)
    out = tmp_path / "claire.json"
    code, said, _ = run("export", used, "--out", str(out), capsys=capsys)
    assert code == 0, said
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["account"]["login"] == used
    assert [c["first_name"] for c in data["children"]] == ["Dylan"]
    assert "(lisible par vous seul)" in said
    code, _, err = run("export", used, "--out", str(out), capsys=capsys)  # never overwritten
    assert (code, err.strip().endswith("(file_error)")) == (1, True)
    code, _, err = run("export", "nobody.here", "--out", str(tmp_path / "x.json"),
                       capsys=capsys)
    assert (code, err.strip().endswith("(account_not_found)")) == (1, True)
    assert not (tmp_path / "x.json").exists()
