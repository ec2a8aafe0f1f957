"""The parent's pages: connexion, activation, Mon compte, Enfants, Regrouper des comptes,
and the way back (« mot de passe oublié ? », « identifiant oublié ? », the links of e-mails).

The parent signs in with an account of the library (not a Django user):
the session keeps the account's id.  Every error of the library is shown
as its French message (:func:`account_merge.messages.error_message`).
Sign-in and activation name the client (its address), so that one
client's failures never slow another's.  The views run in a request
transaction when the project sets ``ATOMIC_REQUESTS``: the library's
failed-attempt counters and failure records outlive its rollback (on
PostgreSQL; see docs/integrations/django.md).
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_http_methods, require_POST

from account_merge import Account, AccountStatus
from account_merge.contrib.django import get_service
from account_merge.exceptions import (
    AccountMerged,
    AccountMergeError,
    AccountNotFound,
    ActivationRequired,
    InvalidInput,
    InvalidToken,
)
from account_merge.messages import error_message, has_message
from ent_example.forms import (
    ActivationForm,
    EmailChangeForm,
    ForgottenLoginForm,
    ForgottenPasswordForm,
    LoginForm,
    MergeForm,
    NewPasswordForm,
)

SESSION_ACCOUNT = "ent_account_id"
SESSION_CONFIRMATION = "ent_merge_confirmation"
SESSION_NOTICE = "ent_notice"
SESSION_RESET_TOKEN = "ent_reset_token"
SESSION_EMAIL_TOKEN = "ent_email_token"

#: What to say until the library's catalogues have these codes.
FALLBACK_MESSAGES = {
    ActivationRequired.code: ("Ce compte n'est pas encore activé : activez-le avec le mot de "
                              "passe provisoire de votre courrier."),
    AccountMerged.code: ("Ce compte a été regroupé avec un autre compte : connectez-vous avec "
                         "votre compte principal. Si ce regroupement n'est pas de votre fait, "
                         "contactez l'établissement, qui peut le casser."),
}

View = Callable[..., HttpResponse]


def _message(error: AccountMergeError) -> str:
    """The library's message for *error*, or this page's own for a code it lacks."""
    if not has_message(error.code) and error.code in FALLBACK_MESSAGES:
        return FALLBACK_MESSAGES[error.code]
    return error_message(error)


def _client(request: HttpRequest) -> str | None:
    """The client the throttle counts sign-in failures for: its address."""
    address = request.META.get("REMOTE_ADDR")
    return address if isinstance(address, str) and address else None


def _signed_in(request: HttpRequest, account: Account) -> None:
    request.session.cycle_key()  # no session fixation
    request.session[SESSION_ACCOUNT] = account.id


def _current_account(request: HttpRequest) -> Account | None:
    """The signed-in parent's account, while it is still active."""
    account_id = request.session.get(SESSION_ACCOUNT)
    if not account_id:
        return None
    try:
        account = get_service().get_account(account_id)
    except AccountNotFound:
        account = None
    if account is None or account.status is not AccountStatus.ACTIVE:
        # Merged into another account since: this one is closed.
        request.session.flush()
        return None
    return account


def parent_required(view: View) -> View:
    """The page needs a signed-in parent; it gets the account as its second argument."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        account = _current_account(request)
        if account is None:
            return redirect("ent:connexion")
        return view(request, account, *args, **kwargs)

    return wrapper


def home(request: HttpRequest) -> HttpResponse:
    return redirect("ent:mon_compte")


@require_http_methods(["GET", "POST"])
def connexion(request: HttpRequest) -> HttpResponse:
    form = LoginForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        login = form.cleaned_data["login"]
        try:
            account = get_service().authenticate(login, form.cleaned_data["password"],
                                                 client=_client(request))
        except ActivationRequired as error:
            # The letter's provisional password: the activation form, login filled in.
            return render(request, "ent_example/activation.html", {
                "form": ActivationForm(initial={"login": login}), "notice": _message(error)})
        except AccountMerged as error:
            # The right password of an absorbed account: sign in with the principal.
            return render(request, "ent_example/connexion.html",
                          {"form": LoginForm(), "notice": _message(error)})
        except AccountMergeError as error:
            form.add_error(None, _message(error))
        else:
            _signed_in(request, account)
            return redirect("ent:mon_compte")
    return render(request, "ent_example/connexion.html", {"form": form})


@require_http_methods(["GET", "POST"])
def activation(request: HttpRequest) -> HttpResponse:
    form = ActivationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            account = get_service().activate(data["login"], data["provisional_password"],
                                             data["new_password"], email=data["email"] or None,
                                             client=_client(request))
        except AccountMergeError as error:
            form.add_error(None, _message(error))
        else:
            _signed_in(request, account)
            return redirect("ent:mon_compte")
    return render(request, "ent_example/activation.html", {"form": form})


@require_POST
def deconnexion(request: HttpRequest) -> HttpResponse:
    request.session.flush()
    return redirect("ent:connexion")


@parent_required
@require_http_methods(["GET", "POST"])
def mon_compte(request: HttpRequest, account: Account) -> HttpResponse:
    """Mon compte, with the form giving a new address (on record once its link is followed)."""
    form = EmailChangeForm(request.POST or None)
    notice = request.session.pop(SESSION_NOTICE, None)
    if request.method == "POST" and form.is_valid():
        email = form.cleaned_data["email"]
        try:
            get_service().request_email_change(account.id, form.cleaned_data["password"],
                                               email, client=_client(request))
        except AccountMergeError as error:
            form.add_error(None, _message(error))
        else:
            request.session[SESSION_NOTICE] = (
                f"Un lien de confirmation a été envoyé à {email} : elle deviendra l'adresse "
                "du compte quand vous l'aurez suivi.")
            return redirect("ent:mon_compte")
    return render(request, "ent_example/mon_compte.html",
                  {"account": account, "form": form, "info": notice})


@parent_required
def mes_donnees(request: HttpRequest, account: Account) -> HttpResponse:
    """Mes données: everything the ENT keeps about the account, as a file (RGPD art. 15)."""
    data = get_service().export_personal_data(account.id)
    response = HttpResponse(json.dumps(data, ensure_ascii=False, indent=2),
                            content_type="application/json; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="mes-donnees.json"'
    add_never_cache_headers(response)
    return response


@parent_required
def enfants(request: HttpRequest, account: Account) -> HttpResponse:
    attached = get_service().attached_children(account.id)
    return render(request, "ent_example/enfants.html",
                  {"account": account, "attached": attached})


@parent_required
@require_http_methods(["GET", "POST"])
def regrouper(request: HttpRequest, account: Account) -> HttpResponse:
    form = MergeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            receipt = get_service().merge(account.id, data["login"], data["password"],
                                          idempotency_key=data["request_id"])
        except AccountMergeError as error:
            form.add_error(None, _message(error))
        else:
            request.session[SESSION_CONFIRMATION] = receipt.message
            return redirect("ent:confirmation")
    return render(request, "ent_example/regrouper.html", {"account": account, "form": form})


@parent_required
def confirmation(request: HttpRequest, account: Account) -> HttpResponse:
    message = request.session.pop(SESSION_CONFIRMATION, None)
    if message is None:
        return redirect("ent:enfants")
    attached = get_service().attached_children(account.id)
    return render(request, "ent_example/confirmation.html",
                  {"account": account, "message": message, "attached": attached})


# -- the way back ------------------------------------------------------------------------
# The notices are sent by ``manage.py account_merge_deliver_notices``, run periodically:
# never during a request, so that a mail server's failure tells nobody which addresses
# exist.  The links put their token in the session and redirect at once (with
# ``Referrer-Policy: no-referrer``), so that it leaves the address bar and the history.

EXPIRED = ("Ce lien n'est plus valable (déjà utilisé, trop ancien, ou le compte a changé "
           "depuis) : faites une nouvelle demande.")


def _no_referrer(response: HttpResponse) -> HttpResponse:
    response["Referrer-Policy"] = "no-referrer"
    return response


@require_http_methods(["GET", "POST"])
def mot_de_passe_oublie(request: HttpRequest) -> HttpResponse:
    """« Mot de passe oublié ? »: a login or an address; the same answer whatever it is."""
    form = ForgottenPasswordForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        with contextlib.suppress(InvalidInput):  # a text no account can have
            get_service().request_password_reset(form.cleaned_data["login_or_email"],
                                                 client=_client(request))
        return redirect("ent:demande_envoyee")
    return render(request, "ent_example/mot_de_passe_oublie.html", {"form": form})


@require_http_methods(["GET", "POST"])
def identifiant_oublie(request: HttpRequest) -> HttpResponse:
    """« Identifiant oublié ? »: an address; the same answer whatever it is."""
    form = ForgottenLoginForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        with contextlib.suppress(InvalidInput):
            get_service().request_login_reminder(form.cleaned_data["email"],
                                                 client=_client(request))
        return redirect("ent:demande_envoyee")
    return render(request, "ent_example/identifiant_oublie.html", {"form": form})


def demande_envoyee(request: HttpRequest) -> HttpResponse:
    return render(request, "ent_example/demande_envoyee.html")


def lien_mot_de_passe(request: HttpRequest, token: str) -> HttpResponse:
    request.session[SESSION_RESET_TOKEN] = token
    return _no_referrer(redirect("ent:nouveau_mot_de_passe"))


@require_http_methods(["GET", "POST"])
def nouveau_mot_de_passe(request: HttpRequest) -> HttpResponse:
    """The new password, with the token of the link; the parent then signs in."""
    token = request.session.get(SESSION_RESET_TOKEN)
    if not isinstance(token, str):
        return render(request, "ent_example/mot_de_passe_oublie.html",
                      {"form": ForgottenPasswordForm(), "notice": EXPIRED})
    form = NewPasswordForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            get_service().reset_password(token, form.cleaned_data["new_password"],
                                         client=_client(request))
        except InvalidToken:
            request.session.pop(SESSION_RESET_TOKEN, None)
            return render(request, "ent_example/mot_de_passe_oublie.html",
                          {"form": ForgottenPasswordForm(), "notice": EXPIRED})
        except AccountMergeError as error:
            form.add_error(None, _message(error))
        else:
            request.session.flush()  # signed in nowhere: the new password proves itself
            return render(request, "ent_example/connexion.html", {
                "form": LoginForm(),
                "info": "Votre mot de passe est modifié : connectez-vous avec le nouveau."})
    return _no_referrer(render(request, "ent_example/nouveau_mot_de_passe.html",
                               {"form": form}))


def lien_courriel(request: HttpRequest, token: str) -> HttpResponse:
    request.session[SESSION_EMAIL_TOKEN] = token
    return _no_referrer(redirect("ent:confirmer_courriel"))


@require_http_methods(["GET", "POST"])
def confirmer_courriel(request: HttpRequest) -> HttpResponse:
    """Confirm the address of the link with a button (mail scanners open links)."""
    token = request.session.get(SESSION_EMAIL_TOKEN)
    if not isinstance(token, str):
        return render(request, "ent_example/confirmer_courriel.html", {"notice": EXPIRED})
    if request.method == "POST":
        request.session.pop(SESSION_EMAIL_TOKEN, None)
        try:
            account = get_service().confirm_email(token)
        except InvalidToken:
            return render(request, "ent_example/confirmer_courriel.html", {"notice": EXPIRED})
        request.session[SESSION_NOTICE] = (
            f"L'adresse {account.email} est confirmée : elle vous permettra de retrouver seul "
            "un identifiant ou un mot de passe oublié.")
        return redirect("ent:mon_compte")
    return _no_referrer(render(request, "ent_example/confirmer_courriel.html",
                               {"ask": True}))
