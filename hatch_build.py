"""Wheel build hook: compile the gettext catalogues (``.po``) into ``.mo`` files, with Babel.

The ``.po`` files in every ``locale/<language>/LC_MESSAGES`` folder of the
package are the sources: the library's own (``account_merge/locale``,
domain ``account_merge``) and the Django app's
(``account_merge/contrib/django/locale``, domain ``django``, where Django
looks for an app's translations).  The wheel carries them and, next to
each, the compiled ``.mo`` that :mod:`gettext` and Django read.  Babel
reads and compiles them (``babel.messages.pofile.read_po``,
``babel.messages.mofile.write_mo``), so it is a requirement of the build
(``[build-system] requires``) as well as of the package.  An editable
install gets no ``.mo``: :mod:`account_merge.messages` then reads the
``.po`` files themselves, and the tests of the Django app compile its
catalogues in place with :func:`compile_catalogue` (see
``tests/django/conftest.py``).
"""

from __future__ import annotations

import io
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from hatchling.builders.hooks.plugin.interface import BuildHookInterface
from hatchling.builders.utils import get_reproducible_timestamp

SOURCES = Path("src")
PACKAGE = SOURCES / "account_merge"


def catalogues(root: Path) -> list[Path]:
    """Every ``locale/<language>/LC_MESSAGES/*.po`` of the package, sorted."""
    return sorted(po for po in (root / PACKAGE).rglob("*.po")
                  if po.parent.name == "LC_MESSAGES" and po.parents[2].name == "locale")


def compile_catalogue(po: Path) -> bytes:
    """The ``.mo`` form of the catalogue *po*.

    Fuzzy entries and entries without translation are left out, as GNU
    ``msgfmt`` does.  A file Babel cannot read raises
    ``babel.messages.pofile.PoFileError``; a catalogue without its
    ``Language`` header raises :class:`ValueError`.  The header Babel
    writes carries a creation date: it is the build's reproducible
    timestamp (``SOURCE_DATE_EPOCH``, as for the wheel's files), not the
    clock's, so that one source always gives the same bytes.
    """
    with po.open("rb") as file:
        catalog = read_po(file, abort_invalid=True)
    if catalog.locale is None:
        raise ValueError(f"{po}: the header names no Language")
    catalog.creation_date = datetime.fromtimestamp(get_reproducible_timestamp(), UTC)
    compiled = io.BytesIO()
    write_mo(compiled, catalog, use_fuzzy=False)
    return compiled.getvalue()


def compile_catalogues(root: Path, destination: Path) -> dict[str, str]:
    """Compile every ``.po`` of the package into *destination*.

    Returns the ``force_include`` mapping: compiled file -> its path in the wheel.
    """
    included: dict[str, str] = {}
    for po in catalogues(root):
        inside = po.relative_to(root / SOURCES).with_suffix(".mo")
        target = destination / inside
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(compile_catalogue(po))
        included[str(target)] = inside.as_posix()
    if not included:
        raise RuntimeError(f"no catalogue found under {root / PACKAGE}")
    return included


class CatalogueBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    """Adds the compiled catalogues to the wheel."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or version == "editable":
            return
        self._compiled = Path(tempfile.mkdtemp(prefix="account-merge-catalogues-"))
        build_data["force_include"].update(compile_catalogues(Path(self.root), self._compiled))

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        compiled = getattr(self, "_compiled", None)
        if compiled is not None:
            shutil.rmtree(compiled, ignore_errors=True)
