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

__all__ = ["DEMO_PASSWORD", "play"]

#: The password the parent chooses for the principal account in the story.
DEMO_PASSWORD = "Trois-Rivieres-2024!"

COLLEGE = Establishment("0869999B", "Collège des Trois Rivières")
RESPONSABLE = "Claire Robert"
DYLAN = Child("D0001", "Dylan", "Robert", COLLEGE.uai)
FLORIAN = Child("F0002", "Florian", "Robert", COLLEGE.uai)

_MASK = "********"
_RULE = "─" * 78


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
    print(letter.render(), end="", file=out)
    print(_RULE, file=out)


def _enfants(service: MergeService, account_id: str, banner: str) -> list[str]:
    """The lines of the Enfants screen of Mon compte."""
    lines = [f"SCOLARITÉ SERVICES{banner.rjust(40)}", "VOTRE COMPTE > ENFANTS", "",
             "Enfants rattachés au compte"]
    for attached in service.attached_children(account_id):
        lines += [f"  {attached.child.first_name}",
                  f"  Responsable : {attached.responsable}"]
    return [*lines, "", "[ REGROUPER DES COMPTES ]"]


def play(service: MergeService, out: TextIO, *, db: str) -> None:
    """Play the story on *service*'s store, printing what the parent sees to *out*."""
    print("Regroupement de comptes responsables : démonstration", file=out)
    print(f"Base : {db}", file=out)

    _step(out, 1, f"Le {COLLEGE.name} ({COLLEGE.uai}) envoie à {RESPONSABLE} "
                  "un courrier de notification par enfant.")
    first = service.issue_account(COLLEGE, display_name=RESPONSABLE, children=[DYLAN])
    second = service.issue_account(COLLEGE, display_name=RESPONSABLE, children=[FLORIAN])
    _letter(out, "Courrier de notification pour Dylan", first)
    print(file=out)
    _letter(out, "Courrier de notification pour Florian", second)

    _step(out, 2, "Le parent active le compte du courrier de Dylan : "
                  "ce sera son compte « Principal ».")
    _screen(out, [
        "SCOLARITÉ SERVICES",
        "Saisir les informations du compte que vous souhaitez garder.",
        "Ce sera votre compte « Principal ».",
        "",
        f"Identifiant : {first.login}",
        f"Mot de passe provisoire : {_MASK}",
        f"Nouveau mot de passe : {_MASK}",
        "[ VALIDER ]",
    ])
    principal = service.activate(first.login, first.provisional_password, Secret(DEMO_PASSWORD))
    print(f"Compte {principal.login} activé : c'est le compte « Principal ».", file=out)

    _step(out, 3, "Mon compte > Enfants : un seul enfant est pour l'instant rattaché "
                  "au compte « Principal ».")
    _screen(out, _enfants(service, principal.id, "DYLAN"))

    _step(out, 4, "Regrouper des comptes : le parent saisit les informations "
                  "du courrier de Florian.")
    _screen(out, [
        "REGROUPER DES COMPTES",
        "Saisissez les informations présentes sur un autre courrier de notification,",
        "ou celles d'un autre compte responsable déjà activé.",
        "",
        f"Identifiant : {second.login}",
        f"Mot de passe : {_MASK}",
        "[ VALIDER ]",
    ])
    receipt = service.merge(principal.id, second.login, second.provisional_password)

    _step(out, 5, "La confirmation de regroupement s'affiche.")
    _screen(out, ["CONFIRMATION DE REGROUPEMENT DE COMPTES", "",
                  *re.split(r"(?<=\.) ", receipt.message), "", "[ VALIDER ]"])

    _step(out, 6, "Mon compte > Enfants liste maintenant tous les enfants.")
    _screen(out, _enfants(service, principal.id, "DYLAN"))
    try:
        service.authenticate(second.login, second.provisional_password)
    except AccountMergeError as error:
        print(f"Le compte {second.login} ne permet plus de se connecter ({error.code}) : "
              "seul le compte « Principal » reste disponible.", file=out)

    _step(out, 7, f"Casser un regroupement : seul l'établissement le peut. "
                  f"Le {COLLEGE.name} génère un nouveau compte pour Florian.")
    split = service.split(COLLEGE, principal.id)
    moved = ", ".join(child.first_name for child in split.moved)
    print(f"Enfant(s) rattaché(s) au nouveau compte : {moved}", file=out)
    print(file=out)
    _letter(out, "Nouveau courrier de notification", split.letter)
    print(file=out)
    _screen(out, _enfants(service, principal.id, "DYLAN"))

    print(file=out)
    print(f"La base {db} reste disponible pour essayer les autres commandes, par exemple :",
          file=out)
    print(f"  account-merge --db {db} children {principal.login}", file=out)
    print(f"  account-merge --db {db} children {split.letter.login}", file=out)
    print(f"Mot de passe du compte « Principal » {principal.login} dans cette démonstration : "
          f"{DEMO_PASSWORD}", file=out)
