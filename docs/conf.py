"""Sphinx configuration of the account_merge documentation.

Build it with warnings as errors, as the test suite does::

    python -m sphinx -W -b html docs docs/_build/html

Cross-references to the documentation of attrs, argon2-cffi, SQLAlchemy,
Django, Hypothesis, pytest and Python go through intersphinx, which
downloads their inventories: set ``ACCOUNT_MERGE_DOCS_INTERSPHINX=1`` to
enable it on a machine with network access.  Without it (the default,
and in the test suite) the build needs no network, and those names are
shown as plain code.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

project = "account_merge"
author = "account_merge developers"
copyright = "account_merge developers"
try:
    release = metadata.version("account-merge")
except metadata.PackageNotFoundError:  # building from a checkout that is not installed
    release = "dev"
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "**/_build", "Thumbs.db", ".DS_Store"]
language = "en"

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"show-inheritance": True}
autodoc_preserve_defaults = False
# The optional integrations are documented even where their extras are not
# installed (the test extra installs them all).
autodoc_mock_imports = [name for name in ("sqlalchemy", "flask", "click")
                        if importlib.util.find_spec(name) is None]

INTERSPHINX = {
    "python": ("https://docs.python.org/3", None),
    "attrs": ("https://www.attrs.org/en/stable/", None),
    "argon2": ("https://argon2-cffi.readthedocs.io/en/stable/", None),
    "sqlalchemy": ("https://docs.sqlalchemy.org/en/20/", None),
    "django": ("https://docs.djangoproject.com/en/5.2/",
               "https://docs.djangoproject.com/en/5.2/_objects/"),
    "hypothesis": ("https://hypothesis.readthedocs.io/en/latest/", None),
    "pytest": ("https://docs.pytest.org/en/stable/", None),
}
intersphinx_mapping = INTERSPHINX if os.environ.get("ACCOUNT_MERGE_DOCS_INTERSPHINX") else {}
intersphinx_timeout = 10

html_theme = "furo"
html_title = "account_merge"
html_static_path: list[str] = []
html_show_sourcelink = False
