"""What to tell a parent when the library refuses: its French message per error code."""

from __future__ import annotations

from typing import Any

from flask import render_template
from flask.typing import ResponseReturnValue

from account_merge.exceptions import AccountMergeError, TooManyAttempts
from account_merge.messages import error_message, has_message

#: Our own wording for codes the library's catalogue may not have yet (it
#: grows with the library): used only when ``account_merge.messages`` has none.
FALLBACKS: dict[str, str] = {
    "activation_required": ("ce compte n'est pas encore activé : activez-le avec le mot de "
                            "passe provisoire de votre courrier de notification"),
    "account_merged": ("ce compte a été regroupé avec un autre compte : connectez-vous avec "
                       "votre compte « Principal » ; si ce regroupement n'est pas de votre "
                       "fait, adressez-vous à l'établissement"),
}


def french(error: AccountMergeError) -> str:
    """The library's French message for *error*, as a sentence."""
    if not has_message(error.code) and error.code in FALLBACKS:
        text = FALLBACKS[error.code]
    else:
        text = error_message(error, "fr")
    return text[:1].upper() + text[1:] + "."


def page(template: str, *, error: str | None = None, cause: AccountMergeError | None = None,
         **context: Any) -> ResponseReturnValue:
    """The page, with its error if any: 400, or 429 with Retry-After when throttled."""
    body = render_template(template, error=error, **context)
    if error is None:
        return body
    if isinstance(cause, TooManyAttempts):
        return body, 429, {"Retry-After": str(cause.retry_after)}
    return body, 400
