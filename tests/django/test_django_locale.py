"""The Django app in French (its users' language) and in English, from its own catalogues.

The app's texts are written in French and marked for translation; its
catalogues live where Django looks for an app's translations,
``account_merge/contrib/django/locale/<language>/LC_MESSAGES/django.po``
(compiled to ``django.mo`` by the wheel build, and in place by this
folder's conftest for a source checkout).
"""

from __future__ import annotations

import ast
import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from babel.messages.mofile import read_mo
from django.apps import apps
from django.contrib import admin
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone, translation
from hatch_build import compile_catalogue

from account_merge.contrib import django as django_app
from account_merge.contrib.django import models as m
from account_merge.testing import make_establishment

APP = Path(django_app.__file__).resolve().parent
LOCALE = APP / "locale"
LANGUAGES = ("fr", "en")
#: Texts of the app's templates that Django's own admin catalogue translates.
FROM_DJANGO = {"Home"}
_MARKERS = {"_", "gettext", "gettext_lazy", "gettext_noop"}
_FIELD = re.compile(r"%\(\w+\)[sdr]")


def po_path(language: str) -> Path:
    return LOCALE / language / "LC_MESSAGES" / "django.po"


def compiled(language: str) -> dict[str, str]:
    """The entries of the app's catalogue as compiled for the wheel (the header left out)."""
    catalog = read_mo(io.BytesIO(compile_catalogue(po_path(language))))
    return {entry.id: entry.string for entry in catalog if entry.id}


def every_msgid(text: str) -> list[str]:
    """Every msgid of a ``.po`` text, translated or not (the header's empty one left out)."""
    found: list[str] = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in block.splitlines() if not line.startswith("#")]
        if not lines or not lines[0].startswith("msgid "):
            continue
        parts = [lines[0][6:]]
        for line in lines[1:]:
            if not line.startswith('"'):
                break
            parts.append(line)
        msgid = "".join(ast.literal_eval(part) for part in parts)
        if msgid:
            found.append(msgid)
    return found


def marked_in_python() -> Iterator[str]:
    """The literal texts the app passes to ``_``, ``gettext``, ``gettext_lazy`` or ``gettext_noop``.

    A text computed at run time (``gettext(self.help)``) is marked where it is written.
    """
    for source in sorted(APP.rglob("*.py")):
        if "migrations" in source.parts:
            continue
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in _MARKERS and node.args
                    and isinstance(node.args[0], ast.Constant)):
                yield node.args[0].value


def marked_in_templates() -> Iterator[str]:
    """The texts of ``{% translate %}`` and ``{% blocktranslate %}`` in the app's templates."""
    for template in sorted(APP.rglob("*.html")):
        text = template.read_text(encoding="utf-8")
        yield from re.findall(r'{% translate "([^"]*)" %}', text)
        for options, body in re.findall(
                r"{% blocktranslate([^%]*)%}(.*?){% endblocktranslate %}", text, re.S):
            text = body
            if "trimmed" in options:
                text = " ".join(line.strip() for line in body.strip().splitlines())
            yield re.sub(r"{{ (\w+) }}", r"%(\1)s", text)


# -- the catalogues ---------------------------------------------------------------------------
@pytest.mark.parametrize("language", LANGUAGES)
def test_every_msgid_of_a_catalogue_has_a_translation(language: str) -> None:
    """No entry is left empty or fuzzy (the compiler would drop it silently)."""
    text = po_path(language).read_text(encoding="utf-8")

    translated = compiled(language)

    assert every_msgid(text)
    assert sorted(every_msgid(text)) == sorted(translated)


def test_the_french_and_english_catalogues_have_the_same_msgids() -> None:
    french, english = (every_msgid(po_path(language).read_text(encoding="utf-8"))
                       for language in LANGUAGES)

    assert sorted(french) == sorted(english)


def test_every_text_marked_in_the_app_is_in_the_catalogues_and_nothing_else() -> None:
    marked = (set(marked_in_python()) | set(marked_in_templates())) - FROM_DJANGO
    catalogued = set(every_msgid(po_path("fr").read_text(encoding="utf-8")))

    assert marked - catalogued == set(), "marked but not in the catalogues"
    assert catalogued - marked == set(), "in the catalogues but no longer marked"


def with_french_typography(text: str) -> str:
    """*text* with no-break spaces before : ; ? ! and inside « »."""
    return re.sub(r"(?<=«) ", "\N{NO-BREAK SPACE}",
                  re.sub(r" (?=[:;?!»])", "\N{NO-BREAK SPACE}", text))


def test_the_french_catalogue_gives_the_source_texts_back_set_in_french_typography() -> None:
    """The texts are written in French; the catalogue adds the no-break spaces French needs."""
    french = compiled("fr")

    assert {key: text for key, text in french.items()
            if with_french_typography(key) != text} == {}


def test_english_translations_keep_the_fields_of_their_source() -> None:
    english = compiled("en")

    changed = {key: text for key, text in english.items()
               if sorted(_FIELD.findall(key)) != sorted(_FIELD.findall(text))}

    assert changed == {}


# -- what staff read --------------------------------------------------------------------------
@pytest.mark.parametrize(("language", "expected"), [
    ("fr", ["Regroupement de comptes", "compte", "comptes", "courriers de notification",
            "établissements", "journal d'audit"]),
    ("en", ["Account merging", "account", "accounts", "notification letters",
            "establishments", "audit log"]),
])
def test_the_admin_names_the_app_and_its_models_in_the_active_language(
        language: str, expected: list[str]) -> None:
    config = apps.get_app_config("account_merge")

    with translation.override(language):
        shown = [str(config.verbose_name), str(m.Account._meta.verbose_name),
                 str(m.Account._meta.verbose_name_plural),
                 str(m.Letter._meta.verbose_name_plural),
                 str(m.Establishment._meta.verbose_name_plural),
                 str(m.AuditEntry._meta.verbose_name_plural)]

    assert shown == expected


@pytest.mark.parametrize(("language", "expected"), [
    ("fr", ("Casser le regroupement (pour mes établissements)", "état", "regroupé")),
    ("en", ("Split the merge (for my establishments)", "status", "merged")),
])
def test_the_split_action_and_the_fields_read_in_the_active_language(
        language: str, expected: tuple[str, str, str]) -> None:
    model_admin = admin.site._registry[m.Account]

    with translation.override(language):
        action = model_admin.get_action("split_merge")
        assert action is not None
        status = m.Account._meta.get_field("status")
        labels = dict(status.choices or [])
        shown = (str(action[2]), str(status.verbose_name), str(labels["merged"]))

    assert shown == expected


@pytest.mark.django_db
@pytest.mark.parametrize(("language", "action", "plural"), [
    ("fr", "Casser le regroupement (pour mes établissements)", "Courriers de notification"),
    ("en", "Split the merge (for my establishments)", "Notification letters"),
])
def test_the_admin_pages_are_served_in_the_active_language(
        language: str, action: str, plural: str) -> None:
    # The changelist offers its actions only when it lists something.
    m.Account.objects.create(id="acc-1", login="claire.robert", login_key="claire.robert",
                             role="responsable", status="provisional",
                             display_name="Claire Robert", establishment_uai="0860001A",
                             created_at=timezone.now())
    user = User.objects.create_superuser("direction", password="Correct-Horse-Battery-9")
    client = Client()
    client.force_login(user)

    with translation.override(language):
        accounts = client.get(reverse("admin:account_merge_account_changelist"))
        index = client.get(reverse("admin:index"))

    assert accounts.status_code == index.status_code == 200
    assert action in accounts.content.decode()
    assert plural in index.content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize(("language", "expected"), [
    ("fr", "établissement inconnu\N{NO-BREAK SPACE}: {uai}"),
    ("en", "unknown establishment: {uai}"),
])
def test_the_commands_answer_staff_in_the_active_language(language: str, expected: str) -> None:
    uai = make_establishment(860099, "Collège absent").uai

    with translation.override(language), pytest.raises(CommandError) as raised:
        call_command("account_merge_split", uai, "nobody")

    assert str(raised.value) == expected.format(uai=uai)


@pytest.mark.django_db
@pytest.mark.parametrize(("language", "expected"), [
    ("fr", "donnée invalide\u00a0: uai"), ("en", "invalid data: uai"),
])
def test_the_library_errors_in_a_command_follow_django_s_language(
        language: str, expected: str) -> None:
    with translation.override(language), pytest.raises(CommandError) as raised:
        call_command("account_merge_split", "not-a-uai", "nobody")

    assert str(raised.value).startswith(expected)


@pytest.mark.parametrize(("language", "expected"), [
    ("fr", "Casse un regroupement"), ("en", "Splits a merge"),
])
def test_the_commands_help_is_in_the_active_language(language: str, expected: str) -> None:
    from account_merge.contrib.django.management.commands.account_merge_split import Command

    with translation.override(language):
        text = Command().create_parser("manage.py", "account_merge_split").format_help()

    assert expected in text


def test_django_reads_the_compiled_catalogues_of_the_app() -> None:
    """Django loads ``<app>/locale/<language>/LC_MESSAGES/django.mo``: here they are."""
    for language in LANGUAGES:
        assert (LOCALE / language / "LC_MESSAGES" / "django.mo").is_file()

    with translation.override("en"):
        assert translation.gettext("preuve d'identité") == "credential"


# -- the library's own messages ------------------------------------------------------------
@pytest.mark.parametrize(("language", "expected"), [
    ("en", "incorrect login or password"), ("fr", "identifiant ou mot de passe incorrect"),
    ("en-gb", "incorrect login or password"),
    ("de", "identifiant ou mot de passe incorrect"),  # no catalogue: the library's French
])
def test_error_message_follows_django_s_active_language(language: str, expected: str) -> None:
    """A project's view shows ``error_message(error)`` in the language of the request."""
    from account_merge.exceptions import InvalidCredentials
    from account_merge.messages import error_message

    with translation.override(language):
        assert error_message(InvalidCredentials()) == expected


def test_a_block_of_the_library_s_language_still_wins_over_django_s() -> None:
    from account_merge.exceptions import InvalidCredentials
    from account_merge.messages import error_message, using_language

    with translation.override("en"), using_language("fr"):
        assert error_message(InvalidCredentials()) == "identifiant ou mot de passe incorrect"
