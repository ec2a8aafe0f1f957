"""``flask --app examples.flask_app seed``: the demo establishment and its letters."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import with_appcontext

from account_merge import Establishment, MergeService, NotificationLetter
from account_merge.contrib.flask import get_service
from account_merge.demo import DYLAN, FLORIAN, RESPONSABLE


def seed_letters(service: MergeService,
                 establishment: Establishment) -> tuple[NotificationLetter, NotificationLetter]:
    """The seed's story: one letter per child (Dylan, Florian) for the same parent."""
    first = service.issue_account(establishment, display_name=RESPONSABLE, children=[DYLAN])
    second = service.issue_account(establishment, display_name=RESPONSABLE, children=[FLORIAN])
    return first, second


@click.command("seed")
@with_appcontext
def seed_command() -> None:
    """Issue the demo letters and print them, with the establishment's access code."""
    establishment: Establishment = current_app.config["ESTABLISHMENT"]
    letters = seed_letters(get_service(), establishment)
    rule = "─" * 78
    for letter, child in zip(letters, ("Dylan", "Florian"), strict=True):
        click.echo(f"── Courrier de notification pour {child} " + "─" * 40)
        click.echo(letter.render(), nl=False)
        click.echo(rule)
        click.echo()
    click.echo("Pour essayer :")
    click.echo("  1. /activation : activez le courrier de Dylan, ce sera votre compte "
               "« Principal » ;")
    click.echo("  2. Mon compte > Enfants > Regrouper des comptes : saisissez l'identifiant "
               "et le mot de passe du courrier de Florian ;")
    click.echo(f"  3. /etablissement : code d'accès de l'établissement "
               f"{establishment.uai} : {current_app.config['ESTABLISHMENT_ACCESS_CODE']}")
