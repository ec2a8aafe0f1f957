"""The gettext catalogues: compiled with Babel into the wheel, read back by the package."""

from __future__ import annotations

import gettext
import io
import re
import shutil
import subprocess
import sys
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from babel.messages.mofile import read_mo
from babel.messages.pofile import PoFileError, read_po
from hatch_build import catalogues, compile_catalogue

from account_merge import messages

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


def entries(mo: bytes) -> dict[str, str]:
    """The entries of a compiled catalogue, the header left out."""
    return {entry.id: entry.string for entry in read_mo(io.BytesIO(mo)) if entry.id}


def a_po(tmp_path: Path, text: str = PO) -> Path:
    po = tmp_path / "x.po"
    po.write_text(text, encoding="utf-8")
    return po


def test_a_compiled_catalogue_reads_through_the_standard_gettext(tmp_path: Path) -> None:
    """Strings continued over several lines, escapes and accents survive the compilation."""
    translations = gettext.GNUTranslations(io.BytesIO(compile_catalogue(a_po(tmp_path))))

    assert translations.gettext("simple") == "Texte simple"
    assert translations.gettext("long") == 'first line, then the rest "quoted"\nand a tab\there'
    assert translations.gettext("accents") == "À l'attention de « Claire »"
    assert translations.info()["language"] == "fr"
    assert translations.charset() == "utf-8"


def test_fuzzy_and_untranslated_entries_are_left_out_as_msgfmt_does(tmp_path: Path) -> None:
    compiled = entries(compile_catalogue(a_po(tmp_path)))

    assert sorted(compiled) == ["accents", "long", "simple"]


@pytest.mark.parametrize("text", [
    'msgid ""\nmsgstr "Language: fr\\n"\n\nmsgid "a"\nmsgid "b"\nmsgstr "c"\n',
    'msgid ""\nmsgstr "Language: fr\\n"\n\nmsgid "a"\nmsgstr "b"\nnonsense\n',
])
def test_the_build_refuses_a_catalogue_it_cannot_read(text: str, tmp_path: Path) -> None:
    with pytest.raises(PoFileError):
        compile_catalogue(a_po(tmp_path, text))


def test_the_build_refuses_a_catalogue_without_its_language(tmp_path: Path) -> None:
    """Babel takes the plural forms and the Language header of the .mo from it."""
    with pytest.raises(ValueError, match="no Language"):
        compile_catalogue(a_po(tmp_path, PO.replace('"Language: fr\\n"\n', "")))


def test_one_source_compiles_to_the_same_bytes_whatever_the_clock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The date in the header is the build's reproducible one, as for the wheel's files."""
    po = a_po(tmp_path)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1788220800")

    first, second = compile_catalogue(po), compile_catalogue(po)

    assert first == second
    created = gettext.GNUTranslations(io.BytesIO(first)).info()["pot-creation-date"]
    assert created == f"{datetime.fromtimestamp(1788220800, UTC):%Y-%m-%d %H:%M}+0000"


DJANGO_LOCALE = ROOT / "src" / "account_merge" / "contrib" / "django" / "locale"
SHIPPED = [
    *(messages.locale_dir() / language / "LC_MESSAGES" / "account_merge.po"
      for language in messages.LANGUAGES),
    *(DJANGO_LOCALE / language / "LC_MESSAGES" / "django.po" for language in messages.LANGUAGES),
]
SHIPPED_IDS = ["/".join(po.parts[-5:]) for po in SHIPPED]


def test_the_build_compiles_every_shipped_catalogue() -> None:
    assert catalogues(ROOT) == sorted(SHIPPED)


def msgids(text: str) -> list[str]:
    """Every msgid of a ``.po`` text as written, its continued strings joined."""
    quoted = r'"(?:[^"\\]|\\.)*"'
    return ["".join(re.findall(quoted, found))
            for found in re.findall(rf"^msgid ((?:{quoted}\n)+)", text, re.M)]


@pytest.mark.parametrize("po", SHIPPED, ids=SHIPPED_IDS)
def test_each_message_is_in_a_shipped_catalogue_once(po: Path) -> None:
    """Babel keeps the first of two entries with one msgid and says nothing, as after a merge."""
    written = msgids(po.read_text(encoding="utf-8"))

    assert len(written) > 10
    assert sorted({msgid for msgid in written if written.count(msgid) > 1}) == []


@pytest.mark.parametrize("language", messages.LANGUAGES)
def test_the_package_reads_its_catalogue_as_the_build_compiles_it(language: str) -> None:
    """From the .po (an editable install) as from the .mo (a wheel): the same messages."""
    po = messages.locale_dir() / language / "LC_MESSAGES" / "account_merge.po"

    assert dict(messages.catalogue(language)) == entries(compile_catalogue(po))


@pytest.mark.skipif(shutil.which("msgfmt") is None, reason="GNU msgfmt is not installed")
@pytest.mark.parametrize("po", SHIPPED, ids=SHIPPED_IDS)
def test_the_shipped_catalogues_pass_gnu_msgfmt_and_compile_alike(
        po: Path, tmp_path: Path) -> None:
    """GNU gettext's own compiler accepts every catalogue and agrees with the build on every entry.

    It is stricter than Babel's reader: an unterminated string, a msgstr
    without msgid or a msgid given twice is an error.
    """
    out = tmp_path / "gnu.mo"

    done = subprocess.run(["msgfmt", "--check-format", "--check-domain", "-o", str(out), str(po)],
                          capture_output=True, text=True, check=False)

    assert done.returncode == 0, done.stderr
    assert entries(out.read_bytes()) == entries(compile_catalogue(po))


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
        with (site / django_folder / "django.po").open("rb") as file:
            source = read_po(file)
        assert entries((site / django_folder / "django.mo").read_bytes()) == {
            entry.id: entry.string for entry in source if entry.id}

    translations = gettext.translation(
        "account_merge", localedir=site / "account_merge" / "locale", languages=["en"])
    assert translations.gettext("invalid_credentials") == "incorrect login or password"
    assert translations.info()["language"] == "en"
    django_translations = gettext.translation(
        "django", localedir=site / "account_merge" / "contrib" / "django" / "locale",
        languages=["en"])
    assert django_translations.gettext("Regroupement de comptes") == "Account merging"
    check = ("from account_merge.messages import describe_wait, message; "
             "print(message('invalid_credentials', 'en')); print(message('same_account')); "
             "print(describe_wait(3574, 'en'))")
    shown = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                           encoding="utf-8", check=False, cwd=tmp_path,
                           env={"PYTHONPATH": str(site), "PATH": "", "PYTHONIOENCODING": "utf-8"})
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == [
        "incorrect login or password",
        messages.catalogue("fr")["same_account"],
        "about 1 hour",
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

