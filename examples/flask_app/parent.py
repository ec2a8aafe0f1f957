"""The parent's pages: connexion, activation, accueil, Mon compte, Enfants, Regrouper des comptes.

The signed session cookie holds the session's token (its digest is in the
example's ``sessions`` table, :mod:`.sessions`), the account's id, the time
of the last password check (``auth_at``) and the child viewed (``eleve``);
the merge form asks for the password again when that check is older than
``RECENT_LOGIN_MAX_AGE`` seconds.
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
    PasswordPolicyError,
)

from . import sessions
from .messages import NBSP, french, page

P = ParamSpec("P")

blueprint = Blueprint("parent", __name__)

_OPERATION = re.compile(r"[0-9a-f]{32}")
MISSING_FIELDS = "Saisissez l'identifiant et le mot de passe."
MERGED_AWAY = (f"Ce compte a été regroupé avec un autre{NBSP}: seul le compte "
               f"«{NBSP}Principal{NBSP}» reste disponible.")
DIFFERENT = "Les deux saisies du nouveau mot de passe diffèrent."
#: The fields of a login and a password: both are named when either is wrong.
CREDENTIALS = ("identifiant", "mot_de_passe")


# -- who is signed in --------------------------------------------------------------


@blueprint.before_app_request
def load_account() -> None:
    """``g.account``: the signed-in ACTIVE account, or None; ``g.children``, ``g.child``."""
    g.account = None
    g.children = ()
    g.child = None
    account_id = session.get("account_id")
    if not isinstance(account_id, str) or request.endpoint == "static":
        return
    if sessions.current_subject() != sessions.parent(account_id):
        session.clear()  # signed out elsewhere, or a new password since
        return
    try:
        account = get_service().get_account(account_id)
    except AccountNotFound:
        sessions.sign_out()
        return
    if account.status is not AccountStatus.ACTIVE:
        # Absorbed by a merge (perhaps from another browser): signed out.
        sessions.sign_out()
        if account.status is AccountStatus.MERGED:
            flash(MERGED_AWAY)
        return
    g.account = account
    g.children = get_service().attached_children(account.id)
    chosen = session.get("eleve")
    g.child = next((a.child for a in g.children if a.child.id == chosen),
                   g.children[0].child if g.children else None)


def _sign_in(account: Account) -> None:
    # A new session: nothing from before signing in survives.
    sessions.sign_in(sessions.parent(account.id), account_id=account.id,
                     auth_at=int(time.time()))


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


def _missing(*names: str) -> list[str]:
    """The fields of *names* left empty."""
    return [name for name in names if not _form(name).strip()]


# -- signing in ---------------------------------------------------------------------


@blueprint.get("/")
def accueil() -> ResponseReturnValue:
    """ACCUEIL: the services of the child viewed (``?eleve=`` chooses another)."""
    if g.account is None:
        return redirect(url_for("parent.connexion"))
    chosen = request.args.get("eleve")
    if chosen is not None:
        for attached in g.children:
            if attached.child.id == chosen:
                session["eleve"] = chosen
                g.child = attached.child
    return render_template("accueil.html")


@blueprint.route("/connexion", methods=["GET", "POST"])
def connexion() -> ResponseReturnValue:
    """Scolarité Services' sign-in page."""
    login = _form("identifiant").strip()
    if request.method == "POST":
        password = _form("mot_de_passe")
        if not login or not password:
            return page("connexion.html", error=MISSING_FIELDS,
                        invalid=_missing(*CREDENTIALS), login=login, next=_safe_next(""))
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
            return page("connexion.html", error=french(exc), cause=exc, invalid=CREDENTIALS,
                        login=login, next=_safe_next(""))
        _sign_in(account)
        return redirect(_safe_next(url_for("parent.accueil")))
    return page("connexion.html", login=login, next=_safe_next(""))


@blueprint.route("/activation", methods=["GET", "POST"])
def activation() -> ResponseReturnValue:
    """First sign-in with a letter: the provisional password is replaced."""
    login = (_form("identifiant") or request.args.get("identifiant", "")).strip()
    email = _form("adresse_mail").strip()
    if request.method == "POST":
        provisional = _form("mot_de_passe_provisoire")
        new, again = _form("nouveau_mot_de_passe"), _form("confirmation")
        missing = _missing("identifiant", "mot_de_passe_provisoire", "nouveau_mot_de_passe",
                           "confirmation")
        error: str | None = None
        invalid: list[str] | tuple[str, ...] = ()
        cause: AccountMergeError | None = None
        if missing:
            error, invalid = ("Saisissez l'identifiant, le mot de passe provisoire et le "
                              "nouveau mot de passe, deux fois."), missing
        elif new != again:
            error, invalid = DIFFERENT, ("confirmation",)
        else:
            try:
                account = get_service().activate(login, provisional, new, email=email or None,
                                                 client=_client())
            except InvalidInput as exc:
                if exc.field == "email":
                    error, invalid = "Adresse mail invalide.", ("adresse_mail",)
                else:
                    error, cause = french(exc), exc
            except PasswordPolicyError as exc:
                error, cause, invalid = french(exc), exc, ("nouveau_mot_de_passe",)
            except AccountMergeError as exc:
                error, cause = french(exc), exc
                invalid = ("identifiant", "mot_de_passe_provisoire")
            else:
                _sign_in(account)
                flash("Votre compte est activé.")
                if email:
                    flash(f"Un lien de confirmation a été envoyé à {email}{NBSP}: elle "
                          "deviendra l'adresse du compte quand vous l'aurez suivi.")
                return redirect(url_for("parent.compte"))
        return page("activation.html", error=error, cause=cause, invalid=invalid, login=login,
                    email=email)
    return page("activation.html", login=login, email=email)


@blueprint.post("/deconnexion")
def deconnexion() -> ResponseReturnValue:
    """Sign out: the session ends here and in every copy of the cookie."""
    sessions.sign_out()
    flash("Vous êtes déconnecté.")
    return redirect(url_for("parent.connexion"))


@blueprint.route("/compte/confirmer-identite", methods=["GET", "POST"])
@login_required
def confirmer_identite() -> ResponseReturnValue:
    """Ask the signed-in parent's password again, before the merge form."""
    account: Account = g.account
    if request.method == "POST":
        password = _form("mot_de_passe")
        if not password:
            return page("confirmer_identite.html", error="Saisissez votre mot de passe.",
                        invalid=("mot_de_passe",), next=_safe_next(""))
        try:
            checked = get_service().authenticate(account.login, password, client=_client())
        except AccountMergeError as exc:
            return page("confirmer_identite.html", error=french(exc), cause=exc,
                        invalid=("mot_de_passe",), next=_safe_next(""))
        session["auth_at"] = int(time.time())
        assert checked.id == account.id
        return redirect(_safe_next(url_for("parent.regrouper")))
    return page("confirmer_identite.html", next=_safe_next(""))


# -- Mon compte ---------------------------------------------------------------------


@blueprint.get("/compte")
@login_required
def compte() -> ResponseReturnValue:
    """Mon compte: the profile (e-mail address, password)."""
    return page("compte.html", form=None)


@blueprint.post("/compte/adresse-mail")
@login_required
def adresse_mail() -> ResponseReturnValue:
    """Give a new e-mail address, proven by the password: on record once confirmed."""
    account: Account = g.account
    address, password = _form("adresse_mail").strip(), _form("mot_de_passe")
    missing = _missing("adresse_mail", "mot_de_passe")
    if missing:
        return page("compte.html", form="adresse",
                    error="Saisissez la nouvelle adresse et votre mot de passe.",
                    invalid=missing)
    try:
        get_service().request_email_change(account.id, password, address, client=_client())
    except InvalidInput as exc:
        if exc.field == "new_email":
            return page("compte.html", form="adresse", error="Adresse mail invalide.",
                        invalid=("adresse_mail",))
        return page("compte.html", form="adresse", error=french(exc), cause=exc)
    except AccountMergeError as exc:
        return page("compte.html", form="adresse", error=french(exc), cause=exc,
                    invalid=("mot_de_passe",))
    flash(f"Un lien de confirmation a été envoyé à {address}{NBSP}: elle deviendra l'adresse "
          "du compte quand vous l'aurez suivi.")
    return redirect(url_for("parent.compte"))


@blueprint.post("/compte/mot-de-passe")
@login_required
def mot_de_passe() -> ResponseReturnValue:
    """Change the password, proven by the current one; the account's other sessions end."""
    account: Account = g.account
    current, new, again = (_form("mot_de_passe_actuel"), _form("nouveau_mot_de_passe"),
                           _form("confirmation"))
    missing = _missing("mot_de_passe_actuel", "nouveau_mot_de_passe", "confirmation")
    if missing:
        return page("compte.html", form="mot_de_passe", invalid=missing,
                    error="Saisissez le mot de passe actuel, puis le nouveau deux fois.")
    if new != again:
        return page("compte.html", form="mot_de_passe", error=DIFFERENT,
                    invalid=("confirmation",))
    try:
        get_service().change_password(account.id, current, new, client=_client())
    except PasswordPolicyError as exc:
        return page("compte.html", form="mot_de_passe", error=french(exc), cause=exc,
                    invalid=("nouveau_mot_de_passe",))
    except AccountMergeError as exc:
        return page("compte.html", form="mot_de_passe", error=french(exc), cause=exc,
                    invalid=("mot_de_passe_actuel",))
    ended = sessions.end_all(sessions.parent(account.id))
    _sign_in(account)  # this browser stays signed in, with a new session
    flash("Mot de passe modifié." + (
        f" Vos autres sessions ouvertes ({ended - 1}) sont fermées." if ended > 1 else ""))
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
    return render_template("enfants.html")


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
    login = _form("identifiant").strip()
    if request.method == "POST":
        password = _form("mot_de_passe")
        operation = _form("operation")
        if not login or not password:
            return page("regrouper.html", error=MISSING_FIELDS, invalid=_missing(*CREDENTIALS),
                        login=login, operation=uuid.uuid4().hex)
        try:
            receipt = get_service().merge(
                account.id, login, password,
                # The same submission sent twice merges once.
                idempotency_key=operation if _OPERATION.fullmatch(operation) else None,
            )
        except AccountMergeError as exc:
            return page("regrouper.html", error=french(exc), cause=exc, invalid=CREDENTIALS,
                        login=login, operation=uuid.uuid4().hex)
        session["regroupement"] = [c.first_name for c in receipt.moved]
        session["regroupement_message"] = receipt.message
        return redirect(url_for("parent.confirmation"))
    return page("regrouper.html", login=login, operation=uuid.uuid4().hex)


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
