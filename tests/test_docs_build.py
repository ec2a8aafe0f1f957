"""The documentation site builds without a warning, and its pages keep their promises.

The code examples of README.md and docs/ run as tests of their own (see
the repository's conftest.py); this file checks the site as a whole.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from account_merge import exceptions
from account_merge.exceptions import AccountMergeError

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def test_the_site_builds_with_warnings_as_errors(tmp_path: Path) -> None:
    """``sphinx-build -W``, offline: what CI runs."""
    pytest.importorskip("sphinx", reason="the docs extra (sphinx, myst-parser, furo) is needed")
    pytest.importorskip("myst_parser", reason="the docs extra is needed")
    pytest.importorskip("furo", reason="the docs extra is needed")

    done = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")],
        capture_output=True, text=True, check=False, timeout=300,
        env={"PATH": "", "PYTHONIOENCODING": "utf-8", "HOME": str(tmp_path)},
    )

    assert done.returncode == 0, done.stderr
    for page in ("index", "concepts", "storage", "storage-sqlite", "integrations/index",
                 "testing", "security", "performance", "errors", "messages", "cli",
                 "glossary", "api", "changelog"):
        assert (tmp_path / "html" / f"{page}.html").is_file(), page


def test_the_errors_page_has_a_section_for_every_code() -> None:
    codes = {cls.code for cls in vars(exceptions).values()
             if isinstance(cls, type) and issubclass(cls, AccountMergeError)
             and cls is not AccountMergeError}
    page = (DOCS / "errors.md").read_text(encoding="utf-8")

    sections = set(re.findall(r"^## `([a-z_]+)`$", page, re.MULTILINE))

    assert sorted(codes - sections) == []
    for code in codes:
        assert f'show("{code}")' in page, code


def test_the_readme_opens_with_exactly_two_set_up_commands() -> None:
    """``.ci/run`` runs the lines of the first ``sh`` block; there must be two."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")

    block = re.search(r"^```sh\n(.*?)^```$", readme, re.MULTILINE | re.DOTALL)

    assert block is not None
    lines = block.group(1).splitlines()
    assert len(lines) == 2
    assert "account-merge" in lines[0] and "demo" in lines[0]
    assert "[test]" in lines[1] and "pytest" in lines[1]


def test_the_readme_links_to_pages_that_exist() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")

    targets = re.findall(r"\]\(((?:docs/)?[\w/.-]+\.md)\)", readme)

    assert targets
    assert [t for t in targets if not (ROOT / t).is_file()] == []


def test_the_getting_started_page_shows_the_screens_of_both_examples() -> None:
    """Every picture the browser tests take of the seed's screens, Flask's and Django's."""
    page = (DOCS / "index.md").read_text(encoding="utf-8")
    shown = set(re.findall(r"\]\((_static/screens/[\w/.-]+\.png)\)", page))

    for example in ("flask", "django"):
        taken = {f"_static/screens/{example}/{picture.name}"
                 for picture in (DOCS / "_static" / "screens" / example).glob("*.png")}
        assert taken, example
        assert sorted(taken - shown) == [], example
    for screen in ("connexion", "activation", "accueil", "mon-compte", "enfants", "regrouper",
                   "confirmation", "enfants-regroupes"):
        for example in ("flask", "django"):
            assert any(re.fullmatch(rf"_static/screens/{example}/(\d+-)?{screen}\.png", s)
                       for s in shown), (example, screen)
    assert sorted(s for s in shown if not (DOCS / s).is_file()) == []
