"""The establishment's pages: casser un regroupement, ré-éditer un courrier, and print letters.

Only the establishment can split (rule S1): its staff sign in with the
establishment's access code (``ESTABLISHMENT_ACCESS_CODE``, printed by the
``seed`` command), then give the login of the responsable account holding
the merged children.  A split makes one new account per letter the
children first came with (``SplitReceipt.letters``); each new letter is
shown once, to print.
"""

from __future__ import annotations

import hmac
import json

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
from account_merge.exceptions import AccountMergeError, NotAuthorized, NothingToSplit

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


@blueprint.route("/courrier", methods=["GET", "POST"])
def courrier() -> ResponseReturnValue:
    """Ré-éditer un courrier perdu: the same login, a new provisional password, printed once."""
    establishment = _establishment()
    if session.get(_SESSION_KEY) != establishment.uai:
        return redirect(url_for("etablissement.connexion"))
    error = letter = None
    login = request.form.get("identifiant", "").strip()
    if request.method == "POST":
        service = get_service()
        account_id = account_id_for_login(service, login) if login else None
        if account_id is None:
            error = "Aucun compte n'a cet identifiant."
        else:
            try:
                letter = service.reissue_letter(establishment, account_id)
            except NotAuthorized:
                error = ("Aucun enfant de l'établissement n'est rattaché à ce compte par un de "
                         "ses courriers, ou le compte a été regroupé : rien à ré-éditer ici.")
            except AccountMergeError as exc:
                error = french(exc)
    return render_template("etablissement_courrier.html", establishment=establishment,
                           login=login, error=error, letter=letter), 200 if error is None else 400


@blueprint.route("/donnees", methods=["GET", "POST"])
def donnees() -> ResponseReturnValue:
    """Données d'un compte: for a parent asking the school (RGPD art. 15), as a file.

    Only for an account of the establishment: issued by it, or holding a
    child one of its letters carried.
    """
    establishment = _establishment()
    if session.get(_SESSION_KEY) != establishment.uai:
        return redirect(url_for("etablissement.connexion"))
    error = None
    login = request.form.get("identifiant", "").strip()
    if request.method == "POST":
        service = get_service()
        account_id = account_id_for_login(service, login) if login else None
        if account_id is None or not _of_establishment(service, account_id, establishment):
            error = "Aucun compte de l'établissement n'a cet identifiant."
        else:
            data = service.export_personal_data(account_id)
            return current_app.response_class(
                json.dumps(data, ensure_ascii=False, indent=2), mimetype="application/json",
                headers={"Content-Disposition": f'attachment; filename="{login}.json"'})
    return render_template("etablissement_donnees.html", establishment=establishment,
                           login=login, error=error), 200 if error is None else 400


def _of_establishment(service: MergeService, account_id: str,
                      establishment: Establishment) -> bool:
    account = service.get_account(account_id)
    if account.establishment_uai == establishment.uai:
        return True
    live = service.resolve(account_id)
    return any(child.origin_establishment_uai == establishment.uai
               for child in service.attached_children(live.id))
