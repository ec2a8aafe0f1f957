"""The messages parents and school staff read, in French (the default) and English.

Every error code and every text of the demonstration and the command line
has a message in each language, kept in the gettext catalogues shipped
with the package (``account_merge/locale/<language>/LC_MESSAGES/
account_merge.po``, compiled to ``.mo`` when the wheel is built).  Message
ids are stable keys: the error codes themselves (``invalid_credentials``)
and dotted names for screen texts (``screen.children_title``).

>>> message("invalid_credentials")
'identifiant ou mot de passe incorrect'
>>> message("invalid_credentials", "en")
'incorrect login or password'
>>> message("too_many_attempts", "en", retry_after=30)
'too many attempts; try again in 30 s'

The messages of error codes are clauses (no capital, no final period), so
that a host can put them after a label or in a sentence of its own; the
texts of screens are written as the screen shows them.

A host chooses the language per call, for the current request
(:func:`using_language`) or for the whole process (:func:`set_language`),
and may replace any message with its own wording (:func:`override`).
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

from account_merge import _msgfmt, exceptions
from account_merge.exceptions import AccountMergeError, InvalidInput

if TYPE_CHECKING:
    from account_merge.domain.letter import NotificationLetter

__all__ = [
    "DEFAULT_LANGUAGE",
    "DOMAIN",
    "ENGLISH",
    "FALLBACK",
    "FRENCH",
    "LANGUAGES",
    "catalogue",
    "error_key",
    "error_message",
    "get_language",
    "has_message",
    "locale_dir",
    "message",
    "normalize_language",
    "override",
    "render_letter",
    "reset_overrides",
    "set_language",
    "using_language",
]

#: The gettext domain of the catalogues (the ``.po``/``.mo`` file name).
DOMAIN = "account_merge"

#: The languages every message exists in.
LANGUAGES: tuple[str, ...] = ("fr", "en")

#: The language used when none is chosen, and for languages not in :data:`LANGUAGES`.
DEFAULT_LANGUAGE = "fr"

#: The key of the message for a code no catalogue knows: the root error's code.
FALLBACK: Final = AccountMergeError.code

_lock = threading.Lock()
_catalogues: dict[str, Mapping[str, str]] = {}
_overrides: dict[tuple[str, str], str] = {}
_process_language = DEFAULT_LANGUAGE
_context_language: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "account_merge_language", default=None)


def locale_dir() -> Path:
    """The folder holding ``<language>/LC_MESSAGES/account_merge.po`` (and ``.mo``).

    Suitable as *localedir* for :func:`gettext.translation` when the
    ``.mo`` files were built (an installed wheel).
    """
    return Path(str(resources.files("account_merge") / "locale"))


def normalize_language(language: str) -> str | None:
    """The supported language *language* names, or None.

    Accepts the usual forms of a tag: ``"fr"``, ``"fr-FR"``, ``"fr_FR.UTF-8"``,
    ``"EN"``.

    >>> normalize_language("en-GB"), normalize_language("de")
    ('en', None)
    """
    if not isinstance(language, str):
        return None
    primary = language.strip().replace("-", "_").split("_", 1)[0].split(".", 1)[0].lower()
    return primary if primary in LANGUAGES else None


def _load(language: str) -> Mapping[str, str]:
    """The shipped catalogue of *language*: the compiled ``.mo``, else the ``.po``."""
    folder = resources.files("account_merge") / "locale" / language / "LC_MESSAGES"
    mo = folder / f"{DOMAIN}.mo"
    if mo.is_file():
        entries = _msgfmt.read_mo(mo.read_bytes())
    else:
        po = folder / f"{DOMAIN}.po"
        entries = _msgfmt.parse_po(po.read_text(encoding="utf-8"), source=str(po))
    entries.pop("", None)  # the header
    return MappingProxyType(entries)


def catalogue(language: str) -> Mapping[str, str]:
    """Every message of *language* as shipped (overrides not applied), by key."""
    code = normalize_language(language)
    if code is None:
        raise InvalidInput("language", f"must be one of {', '.join(LANGUAGES)}")
    with _lock:
        if code not in _catalogues:
            _catalogues[code] = _load(code)
        return _catalogues[code]


def set_language(language: str) -> None:
    """Choose the language of every message of this process (``"fr"`` by default).

    A host serving one language calls it once at start-up.  Raises
    ``invalid_input`` for a language without catalogue, so that a typo in
    a setting does not go unnoticed.
    """
    global _process_language  # noqa: PLW0603
    code = normalize_language(language)
    if code is None:
        raise InvalidInput("language", f"must be one of {', '.join(LANGUAGES)}")
    _process_language = code


def get_language() -> str:
    """The language messages are given in when none is asked for."""
    return _context_language.get() or _process_language


@contextmanager
def using_language(language: str | None) -> Iterator[str]:
    """Give messages in *language* inside the block (this thread or task only).

    For a host serving both languages: wrap a request in it, with the
    language the user chose.  A language without catalogue (or None)
    falls back to the process's language.  Yields the language in use.
    """
    code = normalize_language(language) if language is not None else None
    token = _context_language.set(code)
    try:
        yield get_language()
    finally:
        _context_language.reset(token)


def override(key: str, text: str | None, language: str = DEFAULT_LANGUAGE) -> None:
    """Replace the message *key* of *language* with *text*, for this process.

    The host's own wording wins over the shipped one (``None`` removes the
    override).  *text* may use the same ``{fields}`` as the message it
    replaces.
    """
    code = normalize_language(language)
    if code is None:
        raise InvalidInput("language", f"must be one of {', '.join(LANGUAGES)}")
    if not has_message(key):
        raise InvalidInput("key", f"no message is called {key!r}")
    with _lock:
        if text is None:
            _overrides.pop((code, key), None)
        else:
            if not isinstance(text, str):
                raise InvalidInput("text", "must be a string")
            _overrides[(code, key)] = text


def reset_overrides() -> None:
    """Forget every :func:`override` (for tests)."""
    with _lock:
        _overrides.clear()


class _Missing:
    """A field nobody filled: shown as it was written, ``{name}``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __format__(self, spec: str) -> str:
        return "{" + self.name + (":" + spec if spec else "") + "}"


class _Fields(dict[str, object]):
    def __missing__(self, key: str) -> _Missing:
        return _Missing(key)


def _template(key: str, language: str) -> str | None:
    with _lock:
        text = _overrides.get((language, key))
    if text is not None:
        return text
    return catalogue(language).get(key)


def message(key: str, language: str | None = None, /, **fields: object) -> str:
    """The message *key* in *language*, its ``{fields}`` filled from *fields*.

    *language* defaults to :func:`get_language`; a language without
    catalogue falls back to French.  A field not given stays as written
    (``{retry_after}``).  A key no catalogue has gives the generic message
    of :data:`FALLBACK`, so that a screen never breaks for want of a
    message (the test suite checks that every key in use exists).
    """
    code = (normalize_language(language) if language is not None else None) or get_language()
    template = _template(key, code)
    if template is None and code != DEFAULT_LANGUAGE:
        template = _template(key, DEFAULT_LANGUAGE)
    if template is None:
        template = _template(FALLBACK, code) or catalogue(DEFAULT_LANGUAGE)[FALLBACK]
    return template.format_map(_Fields(fields))


def has_message(key: str) -> bool:
    """True if the shipped catalogues have a message called *key*."""
    return key in catalogue(DEFAULT_LANGUAGE)


def error_key(code: str, rule: object = None) -> str:
    """The key of the message for error *code*, refused by *rule* if it says one.

    ``password_policy`` has a message per rule of the default policy
    (``password_policy.common_password``...); a rule without a message of
    its own (a host's policy may name its own) gives the code's message.

    >>> error_key("password_policy", "sequential"), error_key("password_policy", "no_horse")
    ('password_policy.sequential', 'password_policy')
    """
    if isinstance(rule, str) and rule and has_message(f"{code}.{rule}"):
        return f"{code}.{rule}"
    return code


def error_message(error: AccountMergeError, language: str | None = None) -> str:
    """What to show for *error*: the message of its code, filled from its attributes.

    >>> from account_merge.exceptions import PasswordPolicyError, TooManyAttempts
    >>> error_message(TooManyAttempts(retry_after=60))
    'trop de tentatives ; réessayez dans 60 s'
    >>> error_message(PasswordPolicyError(rule="sequential"), "en")
    'the password must not be a sequence of characters (abcd, 1234, qwerty)'

    A password refused by the password policy gets the message of the rule
    that refused it (:func:`error_key`).  A code without message (an error
    of a newer release, say) gives the generic message of :data:`FALLBACK`.
    """
    fields = {k: v for k, v in vars(error).items() if k != "message"}
    return message(error_key(error.code, getattr(error, "rule", None)), language, **fields)


def _error_codes() -> list[str]:
    return sorted({cls.code for cls in vars(exceptions).values()
                   if isinstance(cls, type) and issubclass(cls, AccountMergeError)})


class _ErrorMessages(Mapping[str, str]):
    """The shipped messages of every error code in one language, read when first used."""

    def __init__(self, language: str) -> None:
        self._language = language

    def __getitem__(self, code: str) -> str:
        if code not in _error_codes():
            raise KeyError(code)
        return catalogue(self._language)[code]

    def __iter__(self) -> Iterator[str]:
        return iter(_error_codes())

    def __len__(self) -> int:
        return len(_error_codes())

    def __repr__(self) -> str:
        return f"<messages of the error codes in {self._language!r}>"


#: The French message of each error code (:data:`FALLBACK` included), fields unfilled.
FRENCH: Final[Mapping[str, str]] = _ErrorMessages("fr")

#: The English message of each error code (:data:`FALLBACK` included), fields unfilled.
ENGLISH: Final[Mapping[str, str]] = _ErrorMessages("en")


def _names(names: list[str], language: str | None) -> str:
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + message("letter.list_and", language) + names[-1]


def render_letter(letter: NotificationLetter, language: str | None = None) -> str:
    """The text of *letter* in *language*, provisional password included.

    In French it is exactly :meth:`NotificationLetter.render`.
    """
    names = _names([f"{c.first_name} {c.last_name}" for c in letter.children], language)
    school = letter.establishment
    for_children = message("letter.for_children", language, names=names) if names else ""
    return (
        f"{school.name} ({school.uai})\n"
        + message("letter.attention", language, name=letter.display_name) + "\n\n"
        + message("letter.intro", language) + "\n\n"
        + message("letter.body", language, establishment=school.name,
                  for_children=for_children) + "\n\n"
        + message("letter.login", language, login=letter.login) + "\n"
        + message("letter.password", language,
                  password=letter.provisional_password.reveal()) + "\n\n"
        + message("letter.footnote", language, expires=letter.expires_at) + "\n"
    )
