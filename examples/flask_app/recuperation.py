"""The way back: « mot de passe oublié ? », « identifiant oublié ? », the e-mail links.

- ``/mot-de-passe-oublie``: a login or an address; always the same answer
  (« si ce compte existe... »), whatever it matched;
- ``/mot-de-passe/<token>``: the link of the notice.  The token goes into
  the session and the browser is sent to ``/mot-de-passe/nouveau`` at
  once, so that it leaves the address bar, the history and the
  ``Referer`` (OWASP); that page takes the new password, twice.  Every
  open session of the account ends, and the parent is not signed in
  afterwards: the sign-in page proves the new password;
- ``/identifiant-oublie``: an address; the same answer always;
- ``/courriel/<token>``: the link confirming an address.  It is confirmed
  by a button (a POST), never by the GET itself, which mail scanners may
  fetch before the parent does;
- ``/courriels``: **this example only**, the mailbox of a parent without a
  mail server: it delivers the pending notices to itself and lists them.
  A real ENT gives ``deliver_notices`` an SMTP or framework mailer and
  runs it periodically (``account-merge deliver-notices``).  The page is
  there only when ``ENT_MAILBOX`` is set (never in production: it shows
  every parent's links).
"""

from __future__ import annotations

import contextlib
import threading

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue

from account_merge.contrib.flask import get_service
from account_merge.domain.notices import Notice
from account_merge.exceptions import (
    AccountMergeError,
    InvalidInput,
    InvalidToken,
    PasswordPolicyError,
)

from . import sessions
from .messages import NBSP, french, page
from .parent import DIFFERENT, _client, _form

blueprint = Blueprint("recuperation", __name__)

SENT = ("Si ce compte existe et a une adresse électronique confirmée, un message vient d'y "
        "être envoyé. Sinon, demandez un nouveau courrier à l'établissement.")
SENT_LOGIN = ("Si cette adresse est celle d'un compte, un message vient d'y être envoyé avec "
              "son identifiant.")
EXPIRED = ("Ce lien n'est plus valable (déjà utilisé, trop ancien, ou le compte a changé "
           f"depuis){NBSP}: faites une nouvelle demande.")
_RESET_TOKEN, _EMAIL_TOKEN = "jeton_mot_de_passe", "jeton_courriel"


class Mailbox:
    """The example's mailbox: the notices delivered, newest first (one process only)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.notices: list[Notice] = []

    def send(self, notice: Notice) -> None:
        with self._lock:
            self.notices.insert(0, notice)


def mailbox() -> Mailbox:
    """The application's mailbox (``app.extensions["ent_mailbox"]``)."""
    found = current_app.extensions["ent_mailbox"]
    assert isinstance(found, Mailbox)
    return found


def _no_referrer(response: ResponseReturnValue) -> ResponseReturnValue:
    """A page reached from a link with a token: its address is sent to nobody."""
    made = current_app.make_response(response)
    made.headers["Referrer-Policy"] = "no-referrer"
    return made


# -- « mot de passe oublié ? » -----------------------------------------------------------


@blueprint.route("/mot-de-passe-oublie", methods=["GET", "POST"])
def mot_de_passe_oublie() -> ResponseReturnValue:
    """Ask for a reset link, by login or address."""
    typed = _form("identifiant").strip()
    if request.method == "POST":
        if not typed:
            return page("mot_de_passe_oublie.html", error="Saisissez votre identifiant ou "
                        "votre adresse électronique.", typed=typed, invalid=("identifiant",))
        with contextlib.suppress(InvalidInput):  # a text no account can have: the same answer
            get_service().request_password_reset(typed, client=_client())
        flash(SENT)
        return redirect(url_for("recuperation.envoye"))
    return page("mot_de_passe_oublie.html", typed=typed)


@blueprint.get("/demande-envoyee")
def envoye() -> ResponseReturnValue:
    """The one answer to every request."""
    return render_template("demande_envoyee.html")


@blueprint.get("/mot-de-passe/<token>")
def lien_mot_de_passe(token: str) -> ResponseReturnValue:
    """The link of the notice: the token goes into the session, out of the address bar."""
    session[_RESET_TOKEN] = token
    return _no_referrer(redirect(url_for("recuperation.nouveau_mot_de_passe")))


@blueprint.route("/mot-de-passe/nouveau", methods=["GET", "POST"])
def nouveau_mot_de_passe() -> ResponseReturnValue:
    """Choose a new password with the link's token."""
    token = session.get(_RESET_TOKEN)
    if not isinstance(token, str):
        flash(EXPIRED)
        return redirect(url_for("recuperation.mot_de_passe_oublie"))
    if request.method == "POST":
        new, again = _form("nouveau_mot_de_passe"), _form("confirmation")
        if not new or not again:
            return _no_referrer(page(
                "nouveau_mot_de_passe.html", error="Saisissez le nouveau mot de passe, deux fois.",
                invalid=[n for n in ("nouveau_mot_de_passe", "confirmation") if not _form(n)]))
        if new != again:
            return _no_referrer(page("nouveau_mot_de_passe.html", error=DIFFERENT,
                                     invalid=("confirmation",)))
        try:
            account = get_service().reset_password(token, new, client=_client())
        except InvalidToken:
            session.pop(_RESET_TOKEN, None)
            flash(EXPIRED)
            return redirect(url_for("recuperation.mot_de_passe_oublie"))
        except PasswordPolicyError as exc:
            return _no_referrer(page("nouveau_mot_de_passe.html", error=french(exc), cause=exc,
                                     invalid=("nouveau_mot_de_passe",)))
        except AccountMergeError as exc:
            return _no_referrer(page("nouveau_mot_de_passe.html", error=french(exc), cause=exc))
        # Signed in nowhere: every session of the account ends, and this one; the
        # new password proves itself at the sign-in page.
        sessions.end_all(sessions.parent(account.id))
        sessions.sign_out()
        flash(f"Votre mot de passe est modifié{NBSP}: connectez-vous avec le nouveau.")
        return redirect(url_for("parent.connexion"))
    return _no_referrer(page("nouveau_mot_de_passe.html"))


# -- « identifiant oublié ? » --------------------------------------------------------------


@blueprint.route("/identifiant-oublie", methods=["GET", "POST"])
def identifiant_oublie() -> ResponseReturnValue:
    """Ask for the logins of an address."""
    typed = _form("adresse_mail").strip()
    if request.method == "POST":
        try:
            get_service().request_login_reminder(typed, client=_client())
        except InvalidInput:
            return page("identifiant_oublie.html", error="Adresse électronique invalide.",
                        typed=typed, invalid=("adresse_mail",))
        flash(SENT_LOGIN)
        return redirect(url_for("recuperation.envoye"))
    return page("identifiant_oublie.html", typed=typed)


# -- the address's confirmation link ----------------------------------------------------


@blueprint.get("/courriel/<token>")
def lien_courriel(token: str) -> ResponseReturnValue:
    """The confirmation link: the token goes into the session; a button confirms."""
    session[_EMAIL_TOKEN] = token
    return _no_referrer(redirect(url_for("recuperation.confirmer_courriel")))


@blueprint.route("/courriel/confirmer", methods=["GET", "POST"])
def confirmer_courriel() -> ResponseReturnValue:
    """Confirm the address of the link (a POST: a scanner fetching the link confirms nothing)."""
    token = session.get(_EMAIL_TOKEN)
    if not isinstance(token, str):
        flash(EXPIRED)
        return redirect(url_for("parent.connexion"))
    if request.method == "POST":
        session.pop(_EMAIL_TOKEN, None)
        try:
            account = get_service().confirm_email(token)
        except InvalidToken:
            flash(EXPIRED)
            return redirect(url_for("parent.compte"))
        flash(f"L'adresse {account.email} est confirmée{NBSP}: elle vous permettra de "
              "retrouver seul un identifiant ou un mot de passe oublié.")
        return redirect(url_for("parent.compte"))
    return _no_referrer(render_template("confirmer_courriel.html"))


# -- this example's mailbox -----------------------------------------------------------------


@blueprint.get("/courriels")
def courriels() -> ResponseReturnValue:
    """The messages sent, to follow their links (this example has no mail server)."""
    if not current_app.config.get("ENT_MAILBOX"):
        abort(404)
    get_service().deliver_notices(mailbox())
    return render_template("courriels.html", notices=mailbox().notices)
