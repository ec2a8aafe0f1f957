"""The parent's pages: connexion, activation, Mon compte, Enfants, Regrouper des comptes.

The signed session cookie holds the account's id and the time of the last
password check (``auth_at``); the merge form asks for the password again
when that check is older than ``RECENT_LOGIN_MAX_AGE`` seconds.
"""

from __future__ import annotations

import functools
import json
import re
import time
import uuid
from collections.abc import Callable
from typing import ParamSpec
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue

from account_merge import Account, AccountStatus, Role
from account_merge.contrib.flask import get_service
from account_merge.exceptions import (
    AccountMergeError,
    AccountNotFound,
    ActivationRequired,
    InvalidInput,
)

from .messages import french, page

P = ParamSpec("P")

blueprint = Blueprint("parent", __name__)

_OPERATION = re.compile(r"[0-9a-f]{32}")
MISSING_FIELDS = "Saisissez l'identifiant et le mot de passe."
MERGED_AWAY = ("Ce compte a été regroupé avec un autre : seul le compte « Principal » "
               "reste disponible.")


# -- who is signed in --------------------------------------------------------------


@blueprint.before_app_request
def load_account() -> None:
    """``g.account``: the signed-in ACTIVE account, or None."""
    g.account = None
    account_id = session.get("account_id")
    if not isinstance(account_id, str) or request.endpoint == "static":
        return
    try:
        account = get_service().get_account(account_id)
    except AccountNotFound:
        session.clear()
        return
    if account.status is not AccountStatus.ACTIVE:
        # Absorbed by a merge (perhaps from another browser): signed out.
        session.clear()
        if account.status is AccountStatus.MERGED:
            flash(MERGED_AWAY)
        return
    g.account = account


def _sign_in(account: Account) -> None:
    session.clear()  # a new session: nothing from before signing in survives
    session["account_id"] = account.id
    session["auth_at"] = int(time.time())


def _safe_next(default: str) -> str:
    """The ``next`` parameter if it is a path of this site, else *default*."""
    target = request.values.get("next", "")
    parts = urlsplit(target)
    if target.startswith("/") and not target.startswith("//") and not parts.netloc \
            and "\\" not in target:
        return target
    return default


def login_required(view: Callable[P, ResponseReturnValue]) -> Callable[P, ResponseReturnValue]:
    """Send visitors to the sign-in page first."""

    @functools.wraps(view)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> ResponseReturnValue:
        if g.account is None:
            return redirect(url_for("parent.connexion", next=request.path))
        return view(*args, **kwargs)

    return wrapped


def recent_login_required(
        view: Callable[P, ResponseReturnValue]) -> Callable[P, ResponseReturnValue]:
    """Ask for the password again when it was last checked too long ago."""

    @functools.wraps(view)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> ResponseReturnValue:
        checked = session.get("auth_at")
        max_age = int(current_app.config["RECENT_LOGIN_MAX_AGE"])
        if not isinstance(checked, int) or time.time() - checked > max_age:
            return redirect(url_for("parent.confirmer_identite", next=request.path))
        return view(*args, **kwargs)

    return wrapped


def _form(name: str) -> str:
    value = request.form.get(name, "")
    return value if isinstance(value, str) else ""


def _client() -> str | None:
    """Who is typing, for the throttling of sign-ins: the address the request came from.

    Behind a reverse proxy, set Werkzeug's ``ProxyFix`` up so that this is
    the parent's address, not the proxy's.
    """
    return request.remote_addr or None


# -- signing in ---------------------------------------------------------------------


@blueprint.get("/")
def accueil() -> ResponseReturnValue:
    """Mon compte when signed in, the sign-in page otherwise."""
    return redirect(url_for("parent.compte" if g.account else "parent.connexion"))


@blueprint.route("/connexion", methods=["GET", "POST"])
def connexion() -> ResponseReturnValue:
    """Scolarité Services' sign-in page."""
    error: str | None = None
    cause: AccountMergeError | None = None
    login = _form("identifiant").strip()
    if request.method == "POST":
        password = _form("mot_de_passe")
        if not login or not password:
            error = MISSING_FIELDS
        else:
            try:
                account = get_service().authenticate(login, password, client=_client())
            except ActivationRequired as exc:
                # The letter's provisional password, proven: the activation form.
                flash(french(exc))
                return redirect(url_for("parent.activation", identifiant=login))
            except AccountMergeError as exc:
                # account_merged (an absorbed account's last password, proven) says
                # where the account went and what to do: sign in with the principal,
                # or ask the school.
                error, cause = french(exc), exc
            else:
                _sign_in(account)
                return redirect(_safe_next(url_for("parent.compte")))
    return page("connexion.html", error=error, cause=cause, login=login, next=_safe_next(""))


@blueprint.route("/activation", methods=["GET", "POST"])
def activation() -> ResponseReturnValue:
    """First sign-in with a letter: the provisional password is replaced."""
    error = cause = None
    login = (_form("identifiant") or request.args.get("identifiant", "")).strip()
    email = _form("adresse_mail").strip()
    if request.method == "POST":
        provisional = _form("mot_de_passe_provisoire")
        new, again = _form("nouveau_mot_de_passe"), _form("confirmation")
        if not login or not provisional or not new:
            error = ("Saisissez l'identifiant, le mot de passe provisoire et le nouveau "
                     "mot de passe.")
        elif new != again:
            error = "Les deux saisies du nouveau mot de passe diffèrent."
        else:
            try:
                account = get_service().activate(login, provisional, new, email=email or None,
                                                 client=_client())
            except InvalidInput as exc:
                error = ("Adresse mail invalide." if exc.field == "email" else french(exc))
            except AccountMergeError as exc:
                error, cause = french(exc), exc
            else:
                _sign_in(account)
                flash("Votre compte est activé : c'est votre compte « Principal ».")
                if email:
                    flash(f"Un lien de confirmation a été envoyé à {email} : elle deviendra "
                          "l'adresse du compte quand vous l'aurez suivi.")
                return redirect(url_for("parent.compte"))
    return page("activation.html", error=error, cause=cause, login=login, email=email)


@blueprint.post("/deconnexion")
def deconnexion() -> ResponseReturnValue:
    """Sign out."""
    session.clear()
    flash("Vous êtes déconnecté.")
    return redirect(url_for("parent.connexion"))


@blueprint.route("/compte/confirmer-identite", methods=["GET", "POST"])
@login_required
def confirmer_identite() -> ResponseReturnValue:
    """Ask the signed-in parent's password again, before the merge form."""
    account: Account = g.account
    error = cause = None
    if request.method == "POST":
        password = _form("mot_de_passe")
        if not password:
            error = "Saisissez votre mot de passe."
        else:
            try:
                checked = get_service().authenticate(account.login, password, client=_client())
            except AccountMergeError as exc:
                error, cause = french(exc), exc
            else:
                _sign_in(checked)
                return redirect(_safe_next(url_for("parent.regrouper")))
    return page("confirmer_identite.html", error=error, cause=cause, next=_safe_next(""))


# -- Mon compte ---------------------------------------------------------------------


def _compte_page(**context: object) -> str:
    account: Account = g.account
    children = get_service().attached_children(account.id)
    return render_template("compte.html", children=children, **context)


@blueprint.get("/compte")
@login_required
def compte() -> ResponseReturnValue:
    """Mon compte: the profile (e-mail address, password)."""
    return _compte_page()


@blueprint.post("/compte/adresse-mail")
@login_required
def adresse_mail() -> ResponseReturnValue:
    """Give a new e-mail address, proven by the password: on record once confirmed."""
    account: Account = g.account
    address, password = _form("adresse_mail").strip(), _form("mot_de_passe")
    if not address or not password:
        return _compte_page(email_error="Saisissez la nouvelle adresse et votre mot de passe."
                            ), 400
    try:
        get_service().request_email_change(account.id, password, address, client=_client())
    except InvalidInput as exc:
        text = "Adresse mail invalide." if exc.field == "new_email" else french(exc)
        return _compte_page(email_error=text), 400
    except AccountMergeError as exc:
        return _compte_page(email_error=french(exc)), 400
    flash(f"Un lien de confirmation a été envoyé à {address} : elle deviendra l'adresse du "
          "compte quand vous l'aurez suivi.")
    return redirect(url_for("parent.compte"))


@blueprint.post("/compte/mot-de-passe")
@login_required
def mot_de_passe() -> ResponseReturnValue:
    """Change the password, proven by the current one."""
    account: Account = g.account
    current, new, again = (_form("mot_de_passe_actuel"), _form("nouveau_mot_de_passe"),
                           _form("confirmation"))
    if not current or not new:
        return _compte_page(password_error="Saisissez le mot de passe actuel et le nouveau."), 400
    if new != again:
        return _compte_page(password_error="Les deux saisies du nouveau mot de passe diffèrent."
                            ), 400
    try:
        get_service().change_password(account.id, current, new, client=_client())
    except AccountMergeError as exc:
        return _compte_page(password_error=french(exc)), 400
    flash("Mot de passe modifié.")
    return redirect(url_for("parent.compte"))


@blueprint.get("/compte/mes-donnees")
@login_required
def mes_donnees() -> ResponseReturnValue:
    """Mes données: everything the ENT keeps about the account, as a file (RGPD art. 15)."""
    data = get_service().export_personal_data(g.account.id)
    return current_app.response_class(
        json.dumps(data, ensure_ascii=False, indent=2), mimetype="application/json",
        headers={"Content-Disposition": 'attachment; filename="mes-donnees.json"'})


@blueprint.get("/compte/enfants")
@login_required
def enfants() -> ResponseReturnValue:
    """Enfants: the children attached to the account, each with its responsable."""
    return render_template("enfants.html",
                           children=get_service().attached_children(g.account.id))


# -- Regrouper des comptes -------------------------------------------------------------


@blueprint.route("/compte/regrouper", methods=["GET", "POST"])
@login_required
@recent_login_required
def regrouper() -> ResponseReturnValue:
    """The merge form: the login and password of another letter or account."""
    account: Account = g.account
    if account.role is not Role.RESPONSABLE:
        flash("Seuls les comptes responsables peuvent regrouper des comptes.")
        return redirect(url_for("parent.compte"))
    error = cause = None
    login = _form("identifiant").strip()
    if request.method == "POST":
        password = _form("mot_de_passe")
        operation = _form("operation")
        if not login or not password:
            error = MISSING_FIELDS
        else:
            try:
                receipt = get_service().merge(
                    account.id, login, password,
                    # The same submission sent twice merges once.
                    idempotency_key=operation if _OPERATION.fullmatch(operation) else None,
                )
            except AccountMergeError as exc:
                error, cause = french(exc), exc
            else:
                session["regroupement"] = [c.first_name for c in receipt.moved]
                session["regroupement_message"] = receipt.message
                return redirect(url_for("parent.confirmation"))
    return page("regrouper.html", error=error, cause=cause, login=login,
                operation=uuid.uuid4().hex)


@blueprint.get("/compte/regrouper/confirmation")
@login_required
def confirmation() -> ResponseReturnValue:
    """CONFIRMATION DE REGROUPEMENT DE COMPTES, once after a merge."""
    message = session.pop("regroupement_message", None)
    moved = session.pop("regroupement", None)
    if not isinstance(message, str):
        return redirect(url_for("parent.enfants"))
    return render_template("confirmation.html", sentences=_sentences(message),
                           moved=moved or [])


def _sentences(text: str) -> list[str]:
    """The confirmation, one sentence a line, as on the seed's screen."""
    return [s for s in re.split(r"(?<=\.)\s+", text.strip()) if s]
