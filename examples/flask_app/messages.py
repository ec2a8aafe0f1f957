"""What to tell a parent when the library refuses: its French message, tied to the fields.

French typography: the texts of this example put a no-break space
(``\\u00a0``, ``&nbsp;`` in the templates) before « : », « ; », « ? », « ! »
and inside « », as the library's French messages do, so that a line
never starts with a colon and « Principal » never breaks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flask import render_template
from flask.typing import ResponseReturnValue

from account_merge.contrib.flask import status_for
from account_merge.exceptions import AccountMergeError, TooManyAttempts
from account_merge.messages import error_message

#: The no-break space of French typography.
NBSP = "\u00a0"


def french(error: AccountMergeError) -> str:
    """The library's French message for *error*, as a sentence."""
    text = error_message(error, "fr")
    return text[:1].upper() + text[1:] + "."


def page(template: str, *, error: str | None = None, cause: AccountMergeError | None = None,
         invalid: Iterable[str] = (), **context: Any) -> ResponseReturnValue:
    """The page, with its error if any, tied to the *invalid* fields.

    The status is the library's for *cause* (401 for a wrong password,
    429 with ``Retry-After`` when throttled...), 400 for the example's own
    checks.  The template marks the invalid fields (``aria-invalid``,
    ``aria-describedby`` naming the error) and puts the focus on the
    first of them.
    """
    fields = list(invalid)
    body = render_template(template, error=error, invalid=fields, **context)
    if error is None:
        return body
    if cause is None:
        return body, 400
    if isinstance(cause, TooManyAttempts):
        return body, 429, {"Retry-After": str(cause.retry_after)}
    return body, status_for(cause)
