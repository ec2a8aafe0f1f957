"""The establishment's page: casser un regroupement, and print the new letters.

Only the establishment can split (rule S1): its staff sign in with the
establishment's access code (``ESTABLISHMENT_ACCESS_CODE``, printed by the
``seed`` command), then give the login of the responsable account holding
the merged children.  A split makes one new account per letter the
children first came with (``SplitReceipt.letters``); each new letter is
shown once, to print.
"""

from __future__ import annotations

import hmac

from flask import (
    Blueprint,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue

from account_merge import Establishment, MergeService
from account_merge.contrib.flask import get_service
from account_merge.exceptions import AccountMergeError, NothingToSplit

from .messages import french

blueprint = Blueprint("etablissement", __name__, url_prefix="/etablissement")

_SESSION_KEY = "etablissement"


def _establishment() -> Establishment:
    establishment = current_app.config["ESTABLISHMENT"]
    assert isinstance(establishment, Establishment)
    return establishment


def account_id_for_login(service: MergeService, login: str) -> str | None:
    """The id of the account with this login, or None."""
    try:
        return service.find_account(login).id
    except AccountMergeError:
        return None


@blueprint.route("/connexion", methods=["GET", "POST"])
def connexion() -> ResponseReturnValue:
    """Staff sign in with the establishment's access code."""
    error = None
    if request.method == "POST":
        expected = str(current_app.config["ESTABLISHMENT_ACCESS_CODE"])
        sent = request.form.get("code", "")
        if hmac.compare_digest(expected.encode(), sent.strip().encode()):
            session.clear()
            session[_SESSION_KEY] = _establishment().uai
            return redirect(url_for("etablissement.regroupements"))
        error = "Code d'accès incorrect."
    return render_template("etablissement_connexion.html", establishment=_establishment(),
                           error=error), 200 if error is None else 400


@blueprint.post("/deconnexion")
def deconnexion() -> ResponseReturnValue:
    """Staff sign out."""
    session.clear()
    flash("Vous êtes déconnecté.")
    return redirect(url_for("etablissement.connexion"))


@blueprint.route("/", methods=["GET", "POST"])
def regroupements() -> ResponseReturnValue:
    """Casser un regroupement: new accounts and letters for the children moved."""
    establishment = _establishment()
    if session.get(_SESSION_KEY) != establishment.uai:
        return redirect(url_for("etablissement.connexion"))
    error = receipt = None
    login = request.form.get("identifiant", "").strip()
    if request.method == "POST":
        service = get_service()
        account_id = account_id_for_login(service, login) if login else None
        if account_id is None:
            error = "Aucun compte n'a cet identifiant."
        else:
            try:
                receipt = service.split(establishment, account_id)
            except NothingToSplit:
                error = ("Aucun enfant de l'établissement n'a rejoint ce compte par un "
                         "regroupement : il n'y a rien à casser.")
            except AccountMergeError as exc:
                error = french(exc)
    return render_template("etablissement.html", establishment=establishment, login=login,
                           error=error, receipt=receipt), 200 if error is None else 400
