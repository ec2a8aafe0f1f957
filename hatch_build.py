"""Wheel build hook: compile the gettext catalogues (``.po``) into ``.mo`` files.

The ``.po`` files in every ``locale/<language>/LC_MESSAGES`` folder of the
package are the sources: the library's own (``account_merge/locale``,
domain ``account_merge``) and the Django app's
(``account_merge/contrib/django/locale``, domain ``django``, where Django
looks for an app's translations).  The wheel carries them and, next to
each, the compiled ``.mo`` that :mod:`gettext` and Django read.  The
compiler is ``src/account_merge/_msgfmt.py``, loaded by path: it needs
nothing but the standard library, so the build needs nothing beyond
hatchling.  An editable install gets no ``.mo``:
:mod:`account_merge.messages` then reads the ``.po`` files themselves,
and the Django app shows its French source texts (the test suite compiles
the Django catalogues in place, see ``tests/django/conftest.py``).
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCES = Path("src")
PACKAGE = SOURCES / "account_merge"


def load_msgfmt(root: Path) -> ModuleType:
    """The package's catalogue compiler, imported without importing the package."""
    path = root / PACKAGE / "_msgfmt.py"
    spec = importlib.util.spec_from_file_location("_account_merge_msgfmt", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def catalogues(root: Path) -> list[Path]:
    """Every ``locale/<language>/LC_MESSAGES/*.po`` of the package, sorted."""
    return sorted(po for po in (root / PACKAGE).rglob("*.po")
                  if po.parent.name == "LC_MESSAGES" and po.parents[2].name == "locale")


def compile_catalogues(root: Path, destination: Path) -> dict[str, str]:
    """Compile every ``.po`` of the package into *destination*.

    Returns the ``force_include`` mapping: compiled file -> its path in the wheel.
    """
    msgfmt = load_msgfmt(root)
    included: dict[str, str] = {}
    for po in catalogues(root):
        inside = po.relative_to(root / SOURCES).with_suffix(".mo")
        target = destination / inside
        target.parent.mkdir(parents=True, exist_ok=True)
        catalog = msgfmt.parse_po(po.read_text(encoding="utf-8"), source=str(po))
        target.write_bytes(msgfmt.compile_mo(catalog))
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
