"""Errors of the jobs run on a school's files, and their one-line messages.

Shared by the command line and the Django management commands, which
report them alike: ``Erreur : <message> (<code>)``.
"""

from __future__ import annotations

from collections.abc import Mapping

from account_merge import messages

__all__ = ["EXIT_ERROR", "EXIT_USAGE", "JobError", "describe", "describe_os_error", "error_text"]

#: Exit status of an error of the library or of the data.
EXIT_ERROR = 1
#: Exit status of a wrong use of a command.
EXIT_USAGE = 2


class JobError(Exception):
    """An error of a job on files (not of the library): a code, its fields, an exit status.

    Its message is ``cli.error.<code>`` in the catalogues (:func:`describe`).
    """

    def __init__(self, code: str, status: int = EXIT_ERROR, **fields: object) -> None:
        self.code = code
        self.status = status
        self.fields = fields
        super().__init__(code)


def error_text(code: str, fields: Mapping[str, object], language: str | None = None) -> str:
    """The message of an error code as a clause: no capital, no final period.

    The command line's own wording of a code (``cli.error.<code>``) wins
    over the library's, and a password policy's rule has its own
    (:func:`account_merge.messages.error_key`); a code without message
    gets the generic one.
    """
    key = (f"cli.error.{code}" if messages.has_message(f"cli.error.{code}")
           else messages.error_key(code, fields.get("rule")))
    text = messages.message(key, language, **fields).removesuffix(".")
    return text[:1].lower() + text[1:]


def describe(code: str, fields: Mapping[str, object], language: str | None = None) -> str:
    """The line for an error: ``Erreur : <message> (<code>)`` in French."""
    text = error_text(code, fields, language)
    return messages.message("cli.error_line", language, message=text, code=code)


#: The message of each kind of file error, in the catalogues.
_OS_ERRORS: dict[type[OSError], str] = {
    FileNotFoundError: "cli.os.file_not_found",
    FileExistsError: "cli.os.file_exists",
    PermissionError: "cli.os.permission",
    IsADirectoryError: "cli.os.is_a_directory",
    NotADirectoryError: "cli.os.not_a_directory",
}


def describe_os_error(error: OSError, language: str | None = None) -> str:
    """The line for a file that could not be read or written (``file_error``), translated."""
    key = next((key for kind, key in _OS_ERRORS.items() if isinstance(error, kind)), None)
    detail = (messages.message(key, language) if key
              else error.strerror or type(error).__name__)
    return describe("file_error", {"detail": detail, "path": error.filename}, language)
