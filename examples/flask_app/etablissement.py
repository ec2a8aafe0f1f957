"""The establishment's pages: casser un regroupement, ré-éditer un courrier, print letters.

Only the establishment can split (rule S1).  Its staff sign in each with
their own login and password (``flask --app examples.flask_app personnel
add``; the ``seed`` command makes one), checked by the library's argon2
verifier, throttled and audited as a parent's sign-in is:

- each attempt is counted *before* the password is checked, per login and
  client (``request.remote_addr``), in the example's table (shared by every
  worker); after ``THROTTLE_BACKOFF_AFTER`` consecutive failures (5) each
  further attempt from that client waits twice as long as the one before
  (1 s, 2 s, 4 s... at most ``THROTTLE_BACKOFF_MAX``): the library's
  :class:`~account_merge.ThrottlePolicy`, the parent's sign-in's;
- a refused or failed attempt and every success are written to the
  example's audit table (the login typed, never a password); the splits
  and re-issued letters are also in the library's audit trail.

A split shows first the account and the children that will leave it (a
confirmation step); one new account per letter the children first came
with (``SplitReceipt.letters``), each new letter shown once, to print.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, ParamSpec

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

from account_merge import Establishment, MergeService
from account_merge.contrib.flask import get_service
from account_merge.domain.logins import login_key
from account_merge.domain.throttle import signin_key
from account_merge.exceptions import (
    AccountMergeError,
    InvalidCredentials,
    NotAuthorized,
    NothingToSplit,
    TooManyAttempts,
)

from . import sessions
from .messages import NBSP, french, page
from .parent import _client, _form
from .store import MAX_LOGIN, get_store

P = ParamSpec("P")

blueprint = Blueprint("etablissement", __name__, url_prefix="/etablissement")

NO_SUCH_LOGIN = "Aucun compte n'a cet identifiant."


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


# -- staff sign-in ------------------------------------------------------------------------


def check_staff(login: str, password: str, client: str | None) -> str:
    """The staff member's login if *password* is theirs; throttled and audited.

    Raises the library's ``too_many_attempts`` (with ``retry_after``) or
    ``invalid_credentials``, as a parent's sign-in does.
    """
    service, store = get_service(), get_store()
    key = signin_key(login_key(login)[:MAX_LOGIN], client)
    now = service.clock()
    wait = store.count_attempt(key, now, service.throttle.wait)
    if wait > 0:
        error = TooManyAttempts(retry_after=service.throttle.retry_after(wait))
        store.record(now, "connexion", error.code, login=login)
        raise error
    found = store.find_staff(login)
    uai = _establishment().uai
    # One verification whatever the login: an unknown one against a dummy hash.
    proven = service.verifier.verify(found.password_hash if found else None, password)
    if not proven or found is None or found.uai != uai:
        store.record(now, "connexion", "invalid_credentials", login=login)
        raise InvalidCredentials()
    store.clear_attempts(key)
    store.record(now, "connexion", "success", actor=found.login, login=login)
    return str(found.login)


def staff_required(view: Callable[P, ResponseReturnValue]) -> Callable[P, ResponseReturnValue]:
    """Staff of this establishment only; ``g.staff`` is their login."""

    @functools.wraps(view)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> ResponseReturnValue:
        login = session.get("personnel")
        if not isinstance(login, str) or sessions.current_subject() != sessions.staff(login):
            session.pop("personnel", None)
            return redirect(url_for("etablissement.connexion"))
        g.staff = login
        return view(*args, **kwargs)

    return wrapped


def _audit(action: str, outcome: str, *, login: str | None = None,
           detail: str | None = None) -> None:
    get_store().record(get_service().clock(), action, outcome, actor=g.staff, login=login,
                       detail=detail)


@blueprint.route("/connexion", methods=["GET", "POST"])
def connexion() -> ResponseReturnValue:
    """Staff sign in with their own login and password."""
    establishment = _establishment()
    login = _form("identifiant").strip()
    if request.method == "POST":
        password = _form("mot_de_passe")
        if not login or not password:
            return page("etablissement_connexion.html", establishment=establishment,
                        login=login, error="Saisissez votre identifiant et votre mot de passe.",
                        invalid=[n for n in ("identifiant", "mot_de_passe") if not _form(n)])
        try:
            staff = check_staff(login, password, _client())
        except AccountMergeError as exc:
            return page("etablissement_connexion.html", establishment=establishment,
                        login=login, error=french(exc), cause=exc,
                        invalid=("identifiant", "mot_de_passe"))
        sessions.sign_in(sessions.staff(staff), personnel=staff)
        return redirect(url_for("etablissement.regroupements"))
    return page("etablissement_connexion.html", establishment=establishment, login=login)


@blueprint.post("/deconnexion")
def deconnexion() -> ResponseReturnValue:
    """Staff sign out."""
    sessions.sign_out()
    flash("Vous êtes déconnecté.")
    return redirect(url_for("etablissement.connexion"))


# -- casser un regroupement ---------------------------------------------------------------


def _leaving(service: MergeService, establishment: Establishment,
             account_id: str) -> tuple[list[tuple[Any, str]], list[Any]]:
    """The children a split would move, each with the name on its first letter; those staying.

    Rule S2, read through the service: the children this establishment's
    letters brought in by a merge leave (one new account per letter they
    came with); the split itself decides, under lock, when it is confirmed.
    """
    attached = service.attached_children(account_id)
    leaving = [a for a in attached
               if a.via_merge and a.origin_establishment_uai == establishment.uai]
    staying = [a for a in attached if a not in leaving]
    names = {a.origin_account_id: service.get_account(a.origin_account_id).display_name
             for a in leaving}
    return [(a, names[a.origin_account_id]) for a in leaving], staying


@blueprint.route("/", methods=["GET", "POST"])
@staff_required
def regroupements() -> ResponseReturnValue:
    """Casser un regroupement, step 1: the account; step 2 shows what will happen."""
    establishment = _establishment()
    login = _form("identifiant").strip()
    if request.method == "POST":
        service = get_service()
        account_id = account_id_for_login(service, login) if login else None
        if account_id is None:
            return page("etablissement.html", establishment=establishment, login=login,
                        error=NO_SUCH_LOGIN, invalid=("identifiant",))
        account = service.resolve(account_id)
        leaving, staying = _leaving(service, establishment, account.id)
        if not leaving:
            return page("etablissement.html", establishment=establishment, login=login,
                        invalid=("identifiant",),
                        error=("Aucun enfant de l'établissement n'a rejoint ce compte par un "
                               f"regroupement{NBSP}: il n'y a rien à casser."))
        return page("etablissement_confirmer.html", establishment=establishment,
                    account=account, leaving=leaving, staying=staying)
    return page("etablissement.html", establishment=establishment, login="")


@blueprint.post("/casser")
@staff_required
def casser() -> ResponseReturnValue:
    """Casser un regroupement, step 2, confirmed: new accounts and letters for the children."""
    establishment = _establishment()
    account_id = _form("compte")
    service = get_service()
    try:
        receipt = service.split(establishment, account_id)
    except NothingToSplit:
        _audit("casser", "nothing_to_split", detail=account_id)
        flash("Aucun enfant de l'établissement n'a rejoint ce compte par un regroupement"
              f"{NBSP}: il n'y a plus rien à casser.")
        return redirect(url_for("etablissement.regroupements"))
    except AccountMergeError as exc:
        _audit("casser", exc.code, detail=account_id)
        return page("etablissement.html", establishment=establishment, login="",
                    error=french(exc), cause=exc)
    _audit("casser", "success", detail=f"{receipt.principal_id} -> "
                                        + ", ".join(receipt.new_account_ids))
    return render_template("etablissement_courriers.html", establishment=establishment,
                           receipt=receipt)


@blueprint.route("/courrier", methods=["GET", "POST"])
@staff_required
def courrier() -> ResponseReturnValue:
    """Ré-éditer un courrier perdu: the same login, a new provisional password, printed once."""
    establishment = _establishment()
    login = _form("identifiant").strip()
    if request.method == "POST":
        service = get_service()
        account_id = account_id_for_login(service, login) if login else None
        if account_id is None:
            return page("etablissement_courrier.html", establishment=establishment,
                        login=login, error=NO_SUCH_LOGIN, invalid=("identifiant",), letter=None)
        try:
            letter = service.reissue_letter(establishment, account_id)
        except NotAuthorized:
            _audit("reediter", "not_authorized", login=login)
            return page("etablissement_courrier.html", establishment=establishment,
                        login=login, invalid=("identifiant",), letter=None,
                        error=("Aucun enfant de l'établissement n'est rattaché à ce compte par "
                               "un de ses courriers, ou le compte a été regroupé" + NBSP
                               + ": rien à ré-éditer ici."))
        except AccountMergeError as exc:
            _audit("reediter", exc.code, login=login)
            return page("etablissement_courrier.html", establishment=establishment,
                        login=login, error=french(exc), cause=exc, letter=None)
        _audit("reediter", "success", login=login)
        return page("etablissement_courrier.html", establishment=establishment, login="",
                    letter=letter)
    return page("etablissement_courrier.html", establishment=establishment, login="",
                letter=None)


@blueprint.route("/donnees", methods=["GET", "POST"])
@staff_required
def donnees() -> ResponseReturnValue:
    """Données d'un compte: for a parent asking the school (RGPD art. 15), as a file.

    Only for an account of the establishment: issued by it, or holding a
    child one of its letters carried.
    """
    establishment = _establishment()
    login = _form("identifiant").strip()
    if request.method == "POST":
        service = get_service()
        account_id = account_id_for_login(service, login) if login else None
        if account_id is None or not _of_establishment(service, account_id, establishment):
            _audit("exporter", "account_not_found", login=login)
            return page("etablissement_donnees.html", establishment=establishment, login=login,
                        error="Aucun compte de l'établissement n'a cet identifiant.",
                        invalid=("identifiant",))
        data = service.export_personal_data(account_id)
        _audit("exporter", "success", login=login)
        return current_app.response_class(
            json.dumps(data, ensure_ascii=False, indent=2), mimetype="application/json",
            headers={"Content-Disposition": f'attachment; filename="{login}.json"'})
    return page("etablissement_donnees.html", establishment=establishment, login="")


def _of_establishment(service: MergeService, account_id: str,
                      establishment: Establishment) -> bool:
    account = service.get_account(account_id)
    if account.establishment_uai == establishment.uai:
        return True
    live = service.resolve(account_id)
    return any(child.origin_establishment_uai == establishment.uai
               for child in service.attached_children(live.id))
