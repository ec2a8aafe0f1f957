"""The parent's pages: Accueil, Connexion, Activation, Mon compte, Enfants, Regrouper des
comptes, and the way back (« mot de passe oublié ? », « identifiant oublié ? », the links
of e-mails).

A parent signs in with an account of the library through Django's own
``authenticate()`` and ``login()`` (the app's authentication backend,
``settings.AUTHENTICATION_BACKENDS``); :func:`account_of` gives the
account of ``request.user`` while it is ACTIVE.  Every page is wrapped by
:func:`account_merge_errors`: a form shows the errors that concern what
was typed (:data:`FORM_ERRORS`, in French), the decorator answers the
rest (429 with ``Retry-After`` when the throttle says wait, 403, 404),
and rolls back what the request wrote (``ATOMIC_REQUESTS``), while the
library keeps the failed attempt.  The merge form asks for the password
again when the last check is older than ``RECENT_LOGIN_MAX_AGE``.

The views that check a password (:data:`PASSWORD_VIEWS`) run outside the
request transaction (``transaction.non_atomic_requests``): on SQLite a
request transaction holds the write lock from its start, argon2's work
included, and parents arriving together would wait for each other past
the database's timeout.  The library's steps are atomic on their own.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib.auth import authenticate, login, logout
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.template import loader
from django.urls import reverse
from django.utils.cache import add_never_cache_headers
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods, require_POST

from account_merge import Account
from account_merge.contrib.django import (
    FORM_ERRORS,
    account_merge_errors,
    account_of,
    add_error,
    client_address,
    end_other_sessions,
    get_service,
)
from account_merge.domain.child import AttachedChild
from account_merge.exceptions import (
    AccountMerged,
    ActivationRequired,
    InvalidInput,
    InvalidToken,
    PasswordPolicyError,
)
from account_merge.messages import error_message, message
from ent_example.forms import (
    ActivationForm,
    EmailChangeForm,
    ForgottenLoginForm,
    ForgottenPasswordForm,
    LoginForm,
    MergeForm,
    NewPasswordForm,
    PasswordAgainForm,
    PasswordChangeForm,
)

NBSP = "\N{NO-BREAK SPACE}"
SESSION_AUTH_AT = "ent_auth_at"
SESSION_CHILD = "ent_child"
SESSION_CONFIRMATION = "ent_merge_confirmation"
SESSION_NOTICE = "ent_notice"
SESSION_RESET_TOKEN = "ent_reset_token"
SESSION_EMAIL_TOKEN = "ent_email_token"

EXPIRED = (f"Ce lien n'est plus valable (déjà utilisé, trop ancien, ou le compte a changé "
           f"depuis){NBSP}: faites une nouvelle demande.")

View = Callable[..., HttpResponse]

#: The views that check a password, out of the request transaction.
PASSWORD_VIEWS = ("connexion", "activation", "confirmer_identite", "mon_compte", "regrouper",
                  "nouveau_mot_de_passe")


# -- who is signed in ----------------------------------------------------------------------
def _signed_in(request: HttpRequest, user: Any) -> None:
    login(request, user)  # a new session key: no session fixation
    request.session[SESSION_AUTH_AT] = int(time.time())


def _next(request: HttpRequest, default: str) -> str:
    """The ``next`` parameter if it is a page of this site, else *default*."""
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()},
                                                  require_https=request.is_secure()):
        return target
    return default


def parent_required(view: View) -> View:
    """The page needs a signed-in parent; it gets the account as its second argument."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        account = account_of(request.user)
        if account is None:
            return redirect(f"{reverse('ent:connexion')}?next={request.path}")
        return view(request, account, *args, **kwargs)

    return wrapper


def recent_sign_in_required(view: View) -> View:
    """Ask for the password again when it was last checked too long ago."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, account: Account, *args: Any, **kwargs: Any) -> HttpResponse:
        checked = request.session.get(SESSION_AUTH_AT)
        max_age = getattr(settings, "RECENT_LOGIN_MAX_AGE", 600)
        if not isinstance(checked, int) or time.time() - checked > max_age:
            return redirect(f"{reverse('ent:confirmer_identite')}?next={request.path}")
        return view(request, account, *args, **kwargs)

    return wrapper


def _children(account: Account) -> tuple[AttachedChild, ...]:
    return get_service().attached_children(account.id)


def _viewed_child(request: HttpRequest,
                  children: tuple[AttachedChild, ...]) -> AttachedChild | None:
    chosen = request.session.get(SESSION_CHILD)
    return next((c for c in children if c.child.id == chosen), children[0] if children else None)


def parent_context(request: HttpRequest) -> dict[str, Any]:
    """The header's context: the signed-in account and the child being viewed."""
    account = account_of(getattr(request, "user", None))
    if account is None:
        return {"account": None}
    children = _children(account)
    return {"account": account, "children": children,
            "viewed": _viewed_child(request, children)}


# -- signing in ----------------------------------------------------------------------------
@account_merge_errors
def accueil(request: HttpRequest) -> HttpResponse:
    """The child's home, named in the header; the switcher chooses the child."""
    account = account_of(request.user)
    if account is None:
        return redirect("ent:connexion")
    children = _children(account)
    chosen = request.GET.get("enfant")
    if chosen is not None and any(c.child.id == chosen for c in children):
        request.session[SESSION_CHILD] = chosen
        return redirect("ent:accueil")
    return render(request, "ent_example/accueil.html")


@transaction.non_atomic_requests  # it hashes: see PASSWORD_VIEWS
@account_merge_errors
@require_http_methods(["GET", "POST"])
def connexion(request: HttpRequest) -> HttpResponse:
    form = LoginForm(request.POST or None)
    notice = request.session.pop(SESSION_NOTICE, None)
    if request.method == "POST" and form.is_valid():
        login_typed = form.cleaned_data["login"]
        try:
            user = authenticate(request, username=login_typed,
                                password=form.cleaned_data["password"])
        except ActivationRequired as error:
            # The letter's provisional password, proven: the activation form, login filled in.
            return render(request, "ent_example/activation.html", {
                "form": ActivationForm(initial={"login": login_typed}),
                "notice": error_message(error)})
        except AccountMerged as error:
            # The right password of an absorbed account: sign in with the principal.
            add_error(form, error)
        else:
            if user is None:
                form.add_error(None, message("invalid_credentials"))
            else:
                _signed_in(request, user)
                return redirect(_next(request, reverse("ent:accueil")))
    return render(request, "ent_example/connexion.html",
                  {"form": form, "next": _next(request, ""), "info": notice})


@transaction.non_atomic_requests  # it hashes: see PASSWORD_VIEWS
@account_merge_errors
@require_http_methods(["GET", "POST"])
def activation(request: HttpRequest) -> HttpResponse:
    form = ActivationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            get_service().activate(data["login"], data["provisional_password"],
                                   data["new_password"], email=data["email"] or None,
                                   client=client_address(request))
        except PasswordPolicyError as error:
            add_error(form, error, "new_password")
        except FORM_ERRORS as error:
            add_error(form, error)
        else:
            user = authenticate(request, username=data["login"], password=data["new_password"])
            if user is not None:
                _signed_in(request, user)
                request.session[SESSION_NOTICE] = (
                    f"Votre compte est activé{NBSP}: vous pouvez le garder comme compte "
                    f"«{NBSP}Principal{NBSP}» et y regrouper vos autres courriers.")
                return redirect("ent:mon_compte")
            return redirect("ent:connexion")
    return render(request, "ent_example/activation.html", {"form": form})


@require_POST
def deconnexion(request: HttpRequest) -> HttpResponse:
    logout(request)  # the session ends, here and in the database
    return redirect("ent:connexion")


@transaction.non_atomic_requests  # it hashes: see PASSWORD_VIEWS
@account_merge_errors
@parent_required
@require_http_methods(["GET", "POST"])
def confirmer_identite(request: HttpRequest, account: Account) -> HttpResponse:
    """The password again, before the merge form."""
    form = PasswordAgainForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = authenticate(request, username=account.login,
                            password=form.cleaned_data["password"])
        if user is None:
            form.add_error("password", "mot de passe incorrect")
        else:
            _signed_in(request, user)
            return redirect(_next(request, reverse("ent:regrouper")))
    return render(request, "ent_example/confirmer_identite.html",
                  {"form": form, "next": _next(request, "")})


# -- Mon compte ----------------------------------------------------------------------------
@transaction.non_atomic_requests  # it hashes: see PASSWORD_VIEWS
@account_merge_errors
@parent_required
@require_http_methods(["GET", "POST"])
def mon_compte(request: HttpRequest, account: Account) -> HttpResponse:
    """Mon compte: the address (on record once its link is followed) and the password."""
    email_form = EmailChangeForm(request.POST if "courriel-email" in request.POST else None,
                                 prefix="courriel")
    password_form = PasswordChangeForm(
        request.POST if "motdepasse-current_password" in request.POST else None,
        prefix="motdepasse")
    if request.method == "POST" and email_form.is_bound and email_form.is_valid():
        email = email_form.cleaned_data["email"]
        try:
            get_service().request_email_change(account.id, email_form.cleaned_data["password"],
                                               email, client=client_address(request))
        except FORM_ERRORS as error:
            add_error(email_form, error)
        else:
            request.session[SESSION_NOTICE] = (
                f"Un lien de confirmation a été envoyé à {email}{NBSP}: elle deviendra "
                "l'adresse du compte quand vous l'aurez suivi.")
            return redirect("ent:mon_compte")
    if request.method == "POST" and password_form.is_bound and password_form.is_valid():
        data = password_form.cleaned_data
        try:
            get_service().change_password(account.id, data["current_password"],
                                          data["new_password"])
        except PasswordPolicyError as error:
            add_error(password_form, error, "new_password")
        except FORM_ERRORS as error:
            add_error(password_form, error, "current_password")
        else:
            end_other_sessions(account.id, request)  # signed out everywhere else
            request.session[SESSION_NOTICE] = (
                f"Votre mot de passe est modifié{NBSP}; vos autres sessions sont fermées.")
            return redirect("ent:mon_compte")
    return render(request, "ent_example/mon_compte.html", {
        "email_form": email_form, "password_form": password_form,
        "info": request.session.pop(SESSION_NOTICE, None)})


@account_merge_errors
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
    return render(request, "ent_example/enfants.html")


@transaction.non_atomic_requests  # it hashes: see PASSWORD_VIEWS
@account_merge_errors
@parent_required
@recent_sign_in_required
@require_http_methods(["GET", "POST"])
def regrouper(request: HttpRequest, account: Account) -> HttpResponse:
    form = MergeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            receipt = get_service().merge(account.id, data["login"], data["password"],
                                          idempotency_key=data["request_id"])
        except FORM_ERRORS as error:
            add_error(form, error)
        else:
            request.session[SESSION_CONFIRMATION] = receipt.message
            return redirect("ent:confirmation")
    return render(request, "ent_example/regrouper.html", {"form": form})


@account_merge_errors
@parent_required
def confirmation(request: HttpRequest, account: Account) -> HttpResponse:
    message = request.session.pop(SESSION_CONFIRMATION, None)
    if message is None:
        return redirect("ent:enfants")
    return render(request, "ent_example/confirmation.html", {"message": message})


# -- the way back ------------------------------------------------------------------------
# The notices are sent by ``manage.py account_merge_deliver_notices``, run periodically:
# never during a request, so that a mail server's failure tells nobody which addresses
# exist.  The links put their token in the session and redirect at once (with
# ``Referrer-Policy: no-referrer``), so that it leaves the address bar and the history.


def _no_referrer(response: HttpResponse) -> HttpResponse:
    """For the redirect whose address holds a token: the token goes nowhere."""
    response["Referrer-Policy"] = "no-referrer"
    return response


def _same_origin(response: HttpResponse) -> HttpResponse:
    """For the form behind a link: no referrer leaves the site.

    Not ``no-referrer``: a form sent from such a page carries ``Origin: null``,
    which Django's CSRF check refuses.
    """
    response["Referrer-Policy"] = "same-origin"
    return response


@account_merge_errors
@require_http_methods(["GET", "POST"])
def mot_de_passe_oublie(request: HttpRequest) -> HttpResponse:
    """« Mot de passe oublié ? »: a login or an address; the same answer whatever it is."""
    form = ForgottenPasswordForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        with contextlib.suppress(InvalidInput):  # a text no account can have
            get_service().request_password_reset(form.cleaned_data["login_or_email"],
                                                 client=client_address(request))
        return redirect("ent:demande_envoyee")
    return render(request, "ent_example/mot_de_passe_oublie.html", {"form": form})


@account_merge_errors
@require_http_methods(["GET", "POST"])
def identifiant_oublie(request: HttpRequest) -> HttpResponse:
    """« Identifiant oublié ? »: an address; the same answer whatever it is."""
    form = ForgottenLoginForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        with contextlib.suppress(InvalidInput):
            get_service().request_login_reminder(form.cleaned_data["email"],
                                                 client=client_address(request))
        return redirect("ent:demande_envoyee")
    return render(request, "ent_example/identifiant_oublie.html", {"form": form})


def demande_envoyee(request: HttpRequest) -> HttpResponse:
    return render(request, "ent_example/demande_envoyee.html")


def lien_mot_de_passe(request: HttpRequest, token: str) -> HttpResponse:
    request.session[SESSION_RESET_TOKEN] = token
    return _no_referrer(redirect("ent:nouveau_mot_de_passe"))


@transaction.non_atomic_requests  # it hashes: see PASSWORD_VIEWS
@account_merge_errors
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
            account = get_service().reset_password(token, form.cleaned_data["new_password"],
                                                   client=client_address(request))
        except InvalidToken:
            request.session.pop(SESSION_RESET_TOKEN, None)
            return render(request, "ent_example/mot_de_passe_oublie.html",
                          {"form": ForgottenPasswordForm(), "notice": EXPIRED})
        except PasswordPolicyError as error:
            add_error(form, error, "new_password")
        except FORM_ERRORS as error:
            add_error(form, error)
        else:
            end_other_sessions(account.id)  # every session of the account ends
            logout(request)  # signed in nowhere: the new password proves itself
            request.session[SESSION_NOTICE] = (
                f"Votre mot de passe est modifié{NBSP}: connectez-vous avec le nouveau.")
            return redirect("ent:connexion")
    return _same_origin(render(request, "ent_example/nouveau_mot_de_passe.html",
                               {"form": form}))


def lien_courriel(request: HttpRequest, token: str) -> HttpResponse:
    request.session[SESSION_EMAIL_TOKEN] = token
    return _no_referrer(redirect("ent:confirmer_courriel"))


@account_merge_errors
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
            f"L'adresse {account.email} est confirmée{NBSP}: elle vous permettra de retrouver "
            "seul un identifiant ou un mot de passe oublié.")
        return redirect("ent:mon_compte" if account_of(request.user) else "ent:connexion")
    return _same_origin(render(request, "ent_example/confirmer_courriel.html",
                               {"ask": True}))


# -- error pages ---------------------------------------------------------------------------
def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    return render(request, "400.html", status=400)


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    return render(request, "404.html", status=404)


def server_error(request: HttpRequest) -> HttpResponse:
    # No context processor: the page must render whatever failed.
    return HttpResponse(loader.get_template("500.html").render(), status=500)
