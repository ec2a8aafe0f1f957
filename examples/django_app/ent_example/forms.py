"""The forms of the parent's pages (Django adds the CSRF token in the templates)."""

from __future__ import annotations

import uuid

from django import forms

from account_merge.domain.passwords import MAX_PASSWORD_LENGTH
from account_merge.domain.validation import MAX_LOGIN_LENGTH


def _password(label: str) -> forms.CharField:
    return forms.CharField(label=label, max_length=MAX_PASSWORD_LENGTH, strip=False,
                           widget=forms.PasswordInput(render_value=False))


class LoginForm(forms.Form):
    login = forms.CharField(label="Identifiant", max_length=MAX_LOGIN_LENGTH)
    password = _password("Mot de passe")


class ActivationForm(forms.Form):
    login = forms.CharField(label="Identifiant (sur le courrier)", max_length=MAX_LOGIN_LENGTH)
    provisional_password = _password("Mot de passe provisoire (sur le courrier)")
    new_password = _password("Nouveau mot de passe")
    new_password_again = _password("Confirmez le nouveau mot de passe")
    email = forms.EmailField(label="Adresse électronique (facultative)", required=False)

    def clean(self) -> dict[str, object]:
        cleaned = super().clean() or {}
        if cleaned.get("new_password") != cleaned.get("new_password_again"):
            self.add_error("new_password_again", "Les deux saisies diffèrent.")
        return cleaned


class MergeForm(forms.Form):
    login = forms.CharField(label="Identifiant de l'autre compte", max_length=MAX_LOGIN_LENGTH)
    password = _password("Mot de passe, ou mot de passe provisoire du courrier")
    #: The same key on a resubmitted form returns the first merge's receipt.
    request_id = forms.CharField(widget=forms.HiddenInput, max_length=64,
                                 initial=lambda: uuid.uuid4().hex)


# -- the way back ------------------------------------------------------------------------


class ForgottenPasswordForm(forms.Form):
    login_or_email = forms.CharField(label="Identifiant ou adresse électronique",
                                     max_length=254)


class ForgottenLoginForm(forms.Form):
    email = forms.EmailField(label="Adresse électronique")


class NewPasswordForm(forms.Form):
    new_password = _password("Nouveau mot de passe")
    new_password_again = _password("Confirmez le nouveau mot de passe")

    def clean(self) -> dict[str, object]:
        cleaned = super().clean() or {}
        if cleaned.get("new_password") != cleaned.get("new_password_again"):
            self.add_error("new_password_again", "Les deux saisies diffèrent.")
        return cleaned


class EmailChangeForm(forms.Form):
    email = forms.EmailField(label="Nouvelle adresse électronique")
    password = _password("Mot de passe actuel")
