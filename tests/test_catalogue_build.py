"""The gettext catalogues: reading .po, writing .mo, and compiling them into the wheel."""

from __future__ import annotations

import gettext
import io
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from account_merge import _msgfmt, messages
from account_merge._msgfmt import PoSyntaxError, compile_mo, parse_po, read_mo

ROOT = Path(__file__).resolve().parent.parent

PO = r'''# a comment
msgid ""
msgstr ""
"Language: fr\n"
"Content-Type: text/plain; charset=UTF-8\n"

#. the translator's note
msgid "simple"
msgstr "Texte simple"

msgid "long"
msgstr ""
"first line, "
"then the rest \"quoted\"\n"
"and a tab\there"

#, fuzzy
msgid "fuzzy"
msgstr "not sure yet"

msgid "untranslated"
msgstr ""

msgid "accents"
msgstr "À l'attention de « Claire »"
'''


def test_parse_po_reads_entries_continuations_and_escapes() -> None:
    catalog = parse_po(PO)

    assert catalog["simple"] == "Texte simple"
    assert catalog["long"] == 'first line, then the rest "quoted"\nand a tab\there'
    assert catalog["accents"] == "À l'attention de « Claire »"
    assert catalog[""].startswith("Language: fr\n")


def test_parse_po_leaves_out_fuzzy_and_untranslated_entries_as_msgfmt_does() -> None:
    catalog = parse_po(PO)

    assert "fuzzy" not in catalog
    assert "untranslated" not in catalog


@pytest.mark.parametrize(("text", "line"), [
    ('msgid "a"\nmsgid "b"\nmsgstr "c"\n', 2),
    ('msgstr "orphan"\n', 1),
    ('msgid "a"\nmsgstr "b"\nmsgid "a"\nmsgstr "c"\n', 3),
    ('msgid "a"\nmsgstr "unterminated\n', 2),
    ('msgid "a"\nmsgid_plural "as"\nmsgstr[0] "x"\n', 2),
    ('msgid "a"\nmsgstr "b"\nnonsense\n', 3),
])
def test_parse_po_refuses_what_it_cannot_read_and_names_the_line(text: str, line: int) -> None:
    with pytest.raises(PoSyntaxError, match=f"x.po:{line}:"):
        parse_po(text, source="x.po")


def test_a_compiled_catalogue_reads_back_through_both_readers() -> None:
    catalog = parse_po(PO)

    compiled = compile_mo(catalog)

    assert read_mo(compiled) == catalog
    translations = gettext.GNUTranslations(io.BytesIO(compiled))
    assert translations.gettext("long") == catalog["long"]
    assert translations.gettext("accents") == catalog["accents"]


def test_read_mo_refuses_a_file_that_is_not_a_catalogue() -> None:
    with pytest.raises(ValueError, match=r"not a \.mo file"):
        read_mo(b"PK\x03\x04 this is a zip file, not a catalogue")
    with pytest.raises(ValueError, match=r"not a \.mo file"):
        read_mo(compile_mo({"a": "b"})[:30])


DJANGO_LOCALE = ROOT / "src" / "account_merge" / "contrib" / "django" / "locale"
SHIPPED = [
    *(messages.locale_dir() / language / "LC_MESSAGES" / "account_merge.po"
      for language in messages.LANGUAGES),
    *(DJANGO_LOCALE / language / "LC_MESSAGES" / "django.po" for language in messages.LANGUAGES),
]


@pytest.mark.skipif(shutil.which("msgfmt") is None, reason="GNU msgfmt is not installed")
@pytest.mark.parametrize("po", SHIPPED, ids=lambda po: "/".join(po.parts[-5:]))
def test_the_shipped_catalogues_pass_gnu_msgfmt_and_compile_alike(
        po: Path, tmp_path: Path) -> None:
    """GNU gettext's own compiler agrees with ours on every entry."""
    out = tmp_path / "gnu.mo"

    done = subprocess.run(["msgfmt", "--check-format", "--check-domain", "-o", str(out), str(po)],
                          capture_output=True, text=True, check=False)

    assert done.returncode == 0, done.stderr
    assert read_mo(out.read_bytes()) == parse_po(po.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this project, built once for the tests of this module."""
    pytest.importorskip("hatchling")
    dist = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-cache-dir", "-q", "-w", str(dist), str(ROOT)],
        capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr
    [built] = dist.glob("*.whl")
    return built


def test_the_wheel_carries_a_compiled_catalogue_per_language(wheel: Path,
                                                             tmp_path: Path) -> None:
    """The build hook compiles every .po; the package then reads the .mo alone.

    The Django app's catalogues are compiled too, to the ``django.mo`` that
    Django reads from ``<app>/locale/<language>/LC_MESSAGES``.
    """
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(site)
    for language in messages.LANGUAGES:
        folder = f"account_merge/locale/{language}/LC_MESSAGES"
        assert f"{folder}/account_merge.mo" in names
        assert f"{folder}/account_merge.po" in names
        (site / folder / "account_merge.po").unlink()
        django_folder = f"account_merge/contrib/django/locale/{language}/LC_MESSAGES"
        assert f"{django_folder}/django.mo" in names
        assert f"{django_folder}/django.po" in names
        django_po = site / django_folder / "django.po"
        assert read_mo((site / django_folder / "django.mo").read_bytes()) == parse_po(
            django_po.read_text(encoding="utf-8"))

    translations = gettext.translation(
        "account_merge", localedir=site / "account_merge" / "locale", languages=["en"])
    assert translations.gettext("invalid_credentials") == "incorrect login or password"
    django_translations = gettext.translation(
        "django", localedir=site / "account_merge" / "contrib" / "django" / "locale",
        languages=["en"])
    assert django_translations.gettext("Regroupement de comptes") == "Account merging"
    check = ("from account_merge.messages import message; "
             "print(message('invalid_credentials', 'en')); print(message('same_account'))")
    shown = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                           encoding="utf-8", check=False, cwd=tmp_path,
                           env={"PYTHONPATH": str(site), "PATH": "", "PYTHONIOENCODING": "utf-8"})
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == [
        "incorrect login or password",
        messages.catalogue("fr")["same_account"],
    ]


def test_the_wheel_carries_the_list_of_common_passwords(wheel: Path, tmp_path: Path) -> None:
    """The password policy reads its list from the installed package, not the repository."""
    shipped = ROOT / "src" / "account_merge" / "domain" / "common_passwords.txt.gz"
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("account_merge/domain/common_passwords.txt.gz") == (
            shipped.read_bytes())
        archive.extractall(site)
    check = ("from account_merge.domain.passwords import CnilPasswordPolicy\n"
             "from account_merge.exceptions import PasswordPolicyError\n"
             "try:\n"
             "    CnilPasswordPolicy().check('Motdepasse123!', login='claire.robert')\n"
             "except PasswordPolicyError as error:\n"
             "    print(error.rule)\n")
    shown = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                           encoding="utf-8", check=False, cwd=tmp_path,
                           env={"PYTHONPATH": str(site), "PATH": "", "PYTHONIOENCODING": "utf-8"})
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split() == ["common_password"]


def test_the_build_hook_and_the_package_share_one_compiler() -> None:
    hook = (ROOT / "hatch_build.py").read_text(encoding="utf-8")

    assert "_msgfmt.py" in hook
    assert Path(_msgfmt.__file__).name == "_msgfmt.py"
