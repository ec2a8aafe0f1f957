"""Runs every code example of README.md and docs/ as a test, with Sybil.

- A ```` ```python ```` block runs; when it starts with ``>>>`` it is a
  doctest, and its output is checked (``...`` matches anything, and
  whitespace is normalised).
- A ```` ```{code-block} python ```` block with ``:caption: path/to/file.py``
  is not run: it is written to that file, so that a later block can run
  it (for example with ``python -m pytest``).  What the reader sees is
  exactly what runs.
- An invisible block, ``<!-- invisible-code-block: python ... -->``, runs
  without being shown; ``<!-- skip: next -->`` skips the next example
  (say why next to it).
- Blocks in other languages (``sh``, ``console``, ``text``) are not run.

The blocks of a page share one namespace and run in order, in a new
empty temporary folder that is the current directory; the language and
overrides of :mod:`account_merge.messages` are reset after each page.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from doctest import ELLIPSIS, NORMALIZE_WHITESPACE
from pathlib import Path
from typing import Any

from sybil import Document, Example, Region, Sybil
from sybil.parsers.myst import PythonCodeBlockParser, SkipParser

from account_merge import messages


class _WriteFile:
    """Writes the example's source to *path*, under the page's folder."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, example: Example) -> None:
        target = Path.cwd() / self.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(str(example.parsed), encoding="utf-8")


class ExampleParser(PythonCodeBlockParser):
    """Python examples run; a block captioned with a ``.py`` file name is written there."""

    def __call__(self, document: Document) -> Iterable[Region]:
        for region in self.codeblock_parser(document):
            options = region.lexemes.get("options") or {}
            caption = str(options.get("caption", ""))
            if caption.endswith(".py"):
                region.evaluator = _WriteFile(caption)
                yield region
            elif str(region.parsed).startswith(">>>"):
                for doctest_region in self.doctest_parser(region.parsed, document.path):
                    doctest_region.adjust(region, region.parsed)
                    yield doctest_region
            else:
                yield region


def _enter_folder(namespace: dict[str, Any]) -> None:
    namespace["__previous_cwd__"] = os.getcwd()
    # A page that sets Django up makes messages follow Django's language: not the next page.
    namespace["__language_source__"] = messages._language_source
    namespace["__folder__"] = tempfile.mkdtemp(prefix="account-merge-doc-")
    os.chdir(namespace["__folder__"])


def _leave_folder(namespace: dict[str, Any]) -> None:
    os.chdir(namespace["__previous_cwd__"])
    shutil.rmtree(namespace["__folder__"], ignore_errors=True)
    messages.set_language(messages.DEFAULT_LANGUAGE)
    messages.reset_overrides()
    messages.follow_language(namespace["__language_source__"])


pytest_collect_file = Sybil(
    parsers=[ExampleParser(doctest_optionflags=ELLIPSIS | NORMALIZE_WHITESPACE), SkipParser()],
    patterns=["README.md", "docs/*.md", "docs/*/*.md"],
    excludes=["docs/_build/*"],
    setup=_enter_folder,
    teardown=_leave_folder,
).pytest()
