"""The story of the regroupement de comptes, played in a terminal, in French.

A collège issues one letter per child to the same responsable; the parent
activates the first letter's account as their « Principal » account, merges
the second letter into it from Mon compte > Enfants, and reads the
confirmation; then the collège breaks the merge up (« casser un
regroupement ») and issues a new letter.  Only the library's public API is
used, as a host application would use it.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from typing import TextIO

from account_merge import (
    AccountMergeError,
    Child,
    Establishment,
    MergeService,
    NotificationLetter,
    Secret,
)
from account_merge.messages import message, render_letter

__all__ = ["DEMO_PASSWORD", "play"]

#: The password the parent chooses for the principal account in the story.
DEMO_PASSWORD = "Trois-Rivieres-2024!"

COLLEGE = Establishment("0869999B", "Collège des Trois Rivières")
RESPONSABLE = "Claire Robert"
DYLAN = Child("D0001", "Dylan", "Robert", COLLEGE.uai)
FLORIAN = Child("F0002", "Florian", "Robert", COLLEGE.uai)

_MASK = "********"
_RULE = "─" * 78


def _(key: str, **fields: object) -> str:
    return message(key, **fields)


def _screen(out: TextIO, lines: Sequence[str]) -> None:
    """A screen of Scolarité Services, drawn as a box."""
    width = max(56, *(len(line) for line in lines))
    print("┌" + "─" * (width + 2) + "┐", file=out)
    for line in lines:
        print(f"│ {line.ljust(width)} │", file=out)
    print("└" + "─" * (width + 2) + "┘", file=out)


def _step(out: TextIO, number: int, text: str) -> None:
    print(file=out)
    print(f"{number}. {text}", file=out)
    print(file=out)


def _letter(out: TextIO, title: str, letter: NotificationLetter) -> None:
    print(f"── {title} " + "─" * max(0, 74 - len(title)), file=out)
    print(render_letter(letter), end="", file=out)
    print(_RULE, file=out)


def _field(label: str, value: str) -> str:
    return _("screen.field", label=_(label), value=value)


def _enfants(service: MergeService, account_id: str, banner: str) -> list[str]:
    """The lines of the Enfants screen of Mon compte."""
    lines = [f"{_('screen.service_name').upper()}{banner.rjust(40)}", _("screen.children_path"),
             "", _("screen.children_title")]
    for attached in service.attached_children(account_id):
        lines += [f"  {attached.child.first_name}",
                  "  " + _("screen.responsable", name=attached.responsable)]
    return [*lines, "", f"[ {_('screen.merge_button').upper()} ]"]


def play(service: MergeService, out: TextIO, *, db: str) -> None:
    """Play the story on *service*'s store, printing what the parent sees to *out*.

    The texts are in the language of :func:`account_merge.messages.get_language`
    (French unless the host chose otherwise).
    """
    validate = f"[ {_('screen.validate').upper()} ]"
    print(_("demo.title"), file=out)
    print(_("demo.database", db=db), file=out)

    _step(out, 1, _("demo.step_issue", college=COLLEGE.name, uai=COLLEGE.uai,
                    responsable=RESPONSABLE))
    first = service.issue_account(COLLEGE, display_name=RESPONSABLE, children=[DYLAN])
    second = service.issue_account(COLLEGE, display_name=RESPONSABLE, children=[FLORIAN])
    _letter(out, _("demo.letter_for", name=DYLAN.first_name), first)
    print(file=out)
    _letter(out, _("demo.letter_for", name=FLORIAN.first_name), second)

    _step(out, 2, _("demo.step_activate", child=DYLAN.first_name))
    _screen(out, [
        _("screen.service_name").upper(),
        _("screen.keep_account"),
        _("screen.principal_account"),
        "",
        _field("screen.login", first.login),
        _field("screen.provisional_password", _MASK),
        _field("screen.new_password", _MASK),
        validate,
    ])
    principal = service.activate(first.login, first.provisional_password, Secret(DEMO_PASSWORD))
    print(_("demo.activated", login=principal.login), file=out)

    banner = DYLAN.first_name.upper()
    _step(out, 3, _("demo.step_one_child"))
    _screen(out, _enfants(service, principal.id, banner))

    _step(out, 4, _("demo.step_merge", child=FLORIAN.first_name))
    _screen(out, [
        _("screen.merge_button").upper(),
        *textwrap.wrap(_("screen.merge_help"), 76),
        "",
        _field("screen.login", second.login),
        _field("screen.password", _MASK),
        validate,
    ])
    service.merge(principal.id, second.login, second.provisional_password)

    _step(out, 5, _("demo.step_confirmation"))
    _screen(out, [_("screen.merge_confirmation_title").upper(), "",
                  *re.split(r"(?<=\.) ", _("merge_confirmation")), "", validate])

    _step(out, 6, _("demo.step_all_children"))
    _screen(out, _enfants(service, principal.id, banner))
    try:
        service.authenticate(second.login, second.provisional_password)
    except AccountMergeError as error:
        print(_("demo.absorbed_refused", login=second.login, code=error.code), file=out)

    _step(out, 7, _("demo.step_split", college=COLLEGE.name, child=FLORIAN.first_name))
    split = service.split(COLLEGE, principal.id)
    moved = ", ".join(child.first_name for child in split.moved)
    print(_("demo.moved", names=moved), file=out)
    print(file=out)
    for letter in split.letters:
        _letter(out, _("demo.new_letter"), letter)
    print(file=out)
    _screen(out, _enfants(service, principal.id, banner))

    print(file=out)
    print(_("demo.next_steps", db=db), file=out)
    print(f"  account-merge --db {db} children {principal.login}", file=out)
    print(f"  account-merge --db {db} children {split.letter.login}", file=out)
    print(_("demo.principal_password", login=principal.login, password=DEMO_PASSWORD), file=out)
