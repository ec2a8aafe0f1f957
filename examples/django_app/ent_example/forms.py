"""The forms of the parent's pages (Django adds the CSRF token in the templates).

Every form renders through ``ent_example/form.html``: a summary of its
errors (``role="alert"``, read out when the page shows), each field's
errors beside it, tied to it by ``aria-describedby`` with
``aria-invalid``, and the focus on the first field to correct.  An error
of the whole form (a wrong login or password) describes each of its
fields.
"""

from __future__ import annotations

import uuid
from typing import Any

from django import forms

from account_merge.domain.passwords import MAX_PASSWORD_LENGTH
from account_merge.domain.validation import MAX_LOGIN_LENGTH

DIFFERENT = "Les deux saisies diffèrent."


def _password(label: str, autocomplete: str = "current-password") -> forms.CharField:
    return forms.CharField(label=label, max_length=MAX_PASSWORD_LENGTH, strip=False,
                           widget=forms.PasswordInput(render_value=False,
                                                      attrs={"autocomplete": autocomplete}))


class EntForm(forms.Form):
    """A form whose errors are tied to their fields, with the focus where to correct."""

    template_name = "ent_example/form.html"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)

    @property
    def summary_id(self) -> str:
        """The id of the summary of the form's errors (one per form of the page)."""
        return f"{self.prefix}-erreurs" if self.prefix else "erreurs"

    def get_context(self) -> dict[str, Any]:
        whole = bool(self.is_bound and self.non_field_errors())
        first = None
        for name, field in self.fields.items():
            if field.widget.is_hidden:
                continue
            bound = self[name]
            described = [f"{bound.auto_id}_helptext"] if field.help_text else []
            if bound.errors:
                described.append(f"{bound.auto_id}_error")
            if whole:
                described.append(self.summary_id)
            if bound.errors or whole:
                field.widget.attrs["aria-invalid"] = "true"
                first = first or name
            if described:
                field.widget.attrs["aria-describedby"] = " ".join(described)
        if first is not None:
            self.fields[first].widget.attrs["autofocus"] = True
        return super().get_context()


class LoginForm(EntForm):
    login = forms.CharField(label="Identifiant", max_length=MAX_LOGIN_LENGTH,
                            widget=forms.TextInput(attrs={"autocomplete": "username"}))
    password = _password("Mot de passe")


class ActivationForm(EntForm):
    login = forms.CharField(label="Identifiant (sur le courrier)", max_length=MAX_LOGIN_LENGTH,
                            widget=forms.TextInput(attrs={"autocomplete": "username"}))
    provisional_password = _password("Mot de passe provisoire (sur le courrier)", "off")
    new_password = _password("Nouveau mot de passe", "new-password")
    new_password_again = _password("Confirmez le nouveau mot de passe", "new-password")
    email = forms.EmailField(label="Adresse électronique (facultative)", required=False,
                             widget=forms.EmailInput(attrs={"autocomplete": "email"}))

    def clean(self) -> dict[str, object]:
        cleaned = super().clean() or {}
        if cleaned.get("new_password") != cleaned.get("new_password_again"):
            self.add_error("new_password_again", DIFFERENT)
        return cleaned


class PasswordAgainForm(EntForm):
    password = _password("Mot de passe")


class MergeForm(EntForm):
    login = forms.CharField(label="Identifiant de l'autre compte", max_length=MAX_LOGIN_LENGTH,
                            widget=forms.TextInput(attrs={"autocomplete": "off"}))
    password = _password("Mot de passe, ou mot de passe provisoire du courrier", "off")
    #: The same key on a resubmitted form returns the first merge's receipt.
    request_id = forms.CharField(widget=forms.HiddenInput, max_length=64,
                                 initial=lambda: uuid.uuid4().hex)


class PasswordChangeForm(EntForm):
    current_password = _password("Mot de passe actuel")
    new_password = _password("Nouveau mot de passe", "new-password")
    new_password_again = _password("Confirmez le nouveau mot de passe", "new-password")

    def clean(self) -> dict[str, object]:
        cleaned = super().clean() or {}
        if cleaned.get("new_password") != cleaned.get("new_password_again"):
            self.add_error("new_password_again", DIFFERENT)
        return cleaned


# -- the way back ------------------------------------------------------------------------


class ForgottenPasswordForm(EntForm):
    login_or_email = forms.CharField(label="Identifiant ou adresse électronique",
                                     max_length=254,
                                     widget=forms.TextInput(attrs={"autocomplete": "username"}))


class ForgottenLoginForm(EntForm):
    email = forms.EmailField(label="Adresse électronique",
                             widget=forms.EmailInput(attrs={"autocomplete": "email"}))


class NewPasswordForm(EntForm):
    new_password = _password("Nouveau mot de passe", "new-password")
    new_password_again = _password("Confirmez le nouveau mot de passe", "new-password")

    def clean(self) -> dict[str, object]:
        cleaned = super().clean() or {}
        if cleaned.get("new_password") != cleaned.get("new_password_again"):
            self.add_error("new_password_again", DIFFERENT)
        return cleaned


class EmailChangeForm(EntForm):
    email = forms.EmailField(label="Nouvelle adresse électronique",
                             widget=forms.EmailInput(attrs={"autocomplete": "email"}))
    password = _password("Mot de passe actuel")
