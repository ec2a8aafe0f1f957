"""``flask --app examples.flask_app seed``: the demo's letters and a staff member; ``personnel``.

``seed`` issues the seed's two letters and makes a staff member of the
establishment (login ``direction``) with a random password, printed once.
``personnel add LOGIN --nom NOM`` adds a staff member (or gives one a new
password), the password asked twice at the prompt and held to the
library's password policy.
"""

from __future__ import annotations

import secrets

import click
from flask import current_app
from flask.cli import AppGroup, with_appcontext

from account_merge import Establishment, MergeService, NotificationLetter
from account_merge.contrib.flask import get_service
from account_merge.demo import DYLAN, FLORIAN, RESPONSABLE
from account_merge.exceptions import AccountMergeError
from account_merge.messages import error_message

from .store import MAX_LOGIN, get_store

#: The staff member the seed makes.
DEMO_STAFF = "direction"


def seed_letters(service: MergeService,
                 establishment: Establishment) -> tuple[NotificationLetter, NotificationLetter]:
    """The seed's story: one letter per child (Dylan, Florian) for the same parent."""
    first = service.issue_account(establishment, display_name=RESPONSABLE, children=[DYLAN])
    second = service.issue_account(establishment, display_name=RESPONSABLE, children=[FLORIAN])
    return first, second


def add_staff(login: str, display_name: str, password: str) -> None:
    """Make *login* a staff member of the application's establishment, with *password*.

    The password is held to the library's password policy and stored as
    the library's verifier hashes it; ``invalid_input`` or
    ``password_policy`` otherwise.
    """
    service = get_service()
    establishment: Establishment = current_app.config["ESTABLISHMENT"]
    login = login.strip()
    if not login or len(login) > MAX_LOGIN or any(c.isspace() for c in login):
        raise click.BadParameter(f"1 to {MAX_LOGIN} characters, no spaces", param_hint="LOGIN")
    service.policies.password_policy.check(password, login=login, context=(display_name,))
    get_store().add_staff(login, display_name, establishment.uai, service.verifier.hash(password))


def _random_password() -> str:
    """20 random characters that the password policy accepts."""
    policy = get_service().policies.password_policy
    while True:
        candidate = secrets.token_urlsafe(15)
        try:
            policy.check(candidate, login=DEMO_STAFF)
        except AccountMergeError:
            continue  # a sequence or a word by chance: draw again
        return candidate


@click.command("seed")
@with_appcontext
def seed_command() -> None:
    """Issue the demo letters and a staff member, and print them."""
    establishment: Establishment = current_app.config["ESTABLISHMENT"]
    letters = seed_letters(get_service(), establishment)
    password = _random_password()
    add_staff(DEMO_STAFF, "Direction du collège", password)
    rule = "─" * 78
    for letter, child in zip(letters, ("Dylan", "Florian"), strict=True):
        click.echo(f"── Courrier de notification pour {child} " + "─" * 40)
        click.echo(letter.render(), nl=False)
        click.echo(rule)
        click.echo()
    click.echo("Pour essayer\u00a0:")
    click.echo("  1. /activation\u00a0: activez le courrier de Dylan, ce sera votre compte "
               "«\u00a0Principal\u00a0»\u00a0;")
    click.echo("  2. Mon compte > Enfants > Regrouper des comptes\u00a0: saisissez l'identifiant "
               "et le mot de passe du courrier de Florian\u00a0;")
    click.echo(f"  3. /etablissement\u00a0: le personnel de l'établissement {establishment.uai} "
               f"se connecte avec l'identifiant {DEMO_STAFF} et le mot de passe {password}")


staff_command = AppGroup("personnel", help="The establishment's staff, who may split merges.")


@staff_command.command("add")
@click.argument("login")
@click.option("--nom", "display_name", required=True, help="The staff member's name.")
@click.password_option("--mot-de-passe", "password", prompt="Mot de passe",
                       confirmation_prompt="Confirmation")
@with_appcontext
def staff_add_command(login: str, display_name: str, password: str) -> None:
    """Make LOGIN a staff member of the establishment (or give a new password)."""
    try:
        add_staff(login, display_name, password)
    except AccountMergeError as error:
        raise click.ClickException(f"{error_message(error, 'fr')} ({error.code})") from None
    click.echo(f"{login}\u00a0: membre du personnel de l'établissement.")
