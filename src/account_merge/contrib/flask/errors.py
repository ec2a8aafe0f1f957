"""The library's errors as HTTP responses in a Flask application: :func:`status_for`,
:func:`error_response` and :func:`handle_errors` (re-exported by
:mod:`account_merge.contrib.flask`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final, TypeAlias

from flask import Blueprint, Flask, Response, current_app, jsonify, render_template, request

from account_merge import messages
from account_merge.exceptions import AccountMergeError, TooManyAttempts

__all__ = ["STATUS_CODES", "Language", "error_response", "handle_errors", "status_for"]

#: The HTTP status of each error code (``docs/errors.md``); a code not listed gets 500.
STATUS_CODES: Final[Mapping[str, int]] = MappingProxyType({
    "invalid_credentials": 401,
    "activation_required": 403,
    "account_merged": 403,
    "not_responsable": 403,
    "principal_not_active": 403,
    "same_account": 400,
    "not_authorized": 403,
    "nothing_to_split": 409,
    "too_many_attempts": 429,
    "password_policy": 400,
    "account_not_found": 404,
    "concurrent_update": 409,
    "invalid_input": 400,
    "storage_error": 503,
    "invalid_token": 400,
    "not_supported": 501,
})

#: A language for the messages: a tag (``"fr"``, ``"en-GB"``), a callable giving one for
#: the current request (``lambda: request.accept_languages.best_match(["fr", "en"])``), or
#: None for :func:`account_merge.messages.get_language` (French unless the host set another).
Language: TypeAlias = str | Callable[[], str | None] | None


def status_for(error: AccountMergeError) -> int:
    """The HTTP status of *error*: :data:`STATUS_CODES` of its code, 500 for a code not listed."""
    return STATUS_CODES.get(error.code, 500)


def error_response(error: AccountMergeError, *, template: str | None = None,
                   language: Language = None, **context: Any) -> Response:
    """The response to *error*: its status, its message for people, ``Retry-After`` if throttled.

    The status is :func:`status_for`'s; ``too_many_attempts`` adds the
    header ``Retry-After: <retry_after>``.  The body is JSON
    (``{"error": code, "message": text}``, with ``retry_after`` when
    throttled) for a client that prefers JSON; otherwise *template*
    rendered with ``error``, ``code``, ``message``, ``status``,
    ``retry_after`` and *context*; without a template, the message as
    plain text.  The message is
    :func:`account_merge.messages.error_message` in *language*: never the
    error's English ``message`` (for logs), never a store's name.  An
    error answered with 500 or more is logged (its code and English text,
    which holds no secret).  Call it in a request.
    """
    status = status_for(error)
    chosen = language() if callable(language) else language
    text = messages.error_message(error, chosen)
    retry_after = error.retry_after if isinstance(error, TooManyAttempts) else None
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    if status >= 500:
        current_app.logger.warning("account_merge: %s answered %d: %s", error.code, status,
                                   error)
    accepted = request.accept_mimetypes
    if accepted.best_match(["text/html", "application/json"]) == "application/json":
        body: dict[str, Any] = {"error": error.code, "message": text}
        if retry_after is not None:
            body["retry_after"] = retry_after
        response = jsonify(body)
    elif template is not None:
        response = current_app.make_response(render_template(
            template, error=error, code=error.code, message=text, status=status,
            retry_after=retry_after, **context))
    else:
        response = current_app.response_class(text, mimetype="text/plain")
    response.status_code = status
    response.headers.update(headers)
    return response


def handle_errors(scope: Flask | Blueprint, *, template: str | None = None,
                  language: Language = None) -> None:
    """Answer every :class:`~account_merge.exceptions.AccountMergeError` a view lets out.

    On *scope* (the application, or one blueprint), with
    :func:`error_response`: 429 and ``Retry-After`` when throttled, the
    status of each code, and the message for people in *language*
    (rendered in *template* when given).  A view that handles an error
    itself (to show the form again, say) keeps doing so.
    """

    def answer(error: AccountMergeError) -> Response:
        return error_response(error, template=template, language=language)

    scope.register_error_handler(AccountMergeError, answer)
