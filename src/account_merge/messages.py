"""The messages parents and school staff read, in French (the default) and English.

Every error code and every text of the demonstration and the command line
has a message in each language, kept in the gettext catalogues shipped
with the package (``account_merge/locale/<language>/LC_MESSAGES/
account_merge.po``, read and compiled to ``.mo`` with Babel).  Message
ids are stable keys: the error codes themselves (``invalid_credentials``)
and dotted names for screen texts (``screen.children_title``).

>>> message("invalid_credentials")
'identifiant ou mot de passe incorrect'
>>> message("invalid_credentials", "en")
'incorrect login or password'

The messages of error codes are clauses (no capital, no final period), so
that a host can put them after a label or in a sentence of its own; the
texts of screens are written as the screen shows them.  A wait is said
as a person would say it (:func:`describe_wait`):

>>> describe_wait(3574, "en"), describe_wait(119, "en")
('about 1 hour', '2 minutes')

A host chooses the language per call, for the current request
(:func:`using_language`) or for the whole process (:func:`set_language`),
and may replace any message with its own wording (:func:`override`).
"""

from __future__ import annotations

import contextvars
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

from account_merge import exceptions
from account_merge.domain.letter import establishment_with_article
from account_merge.exceptions import AccountMergeError, InvalidInput, TooManyAttempts

if TYPE_CHECKING:
    from babel.messages.catalog import Message

    from account_merge.domain.letter import NotificationLetter
    from account_merge.domain.retention import PurgeReport

__all__ = [
    "DEFAULT_LANGUAGE",
    "DOMAIN",
    "ENGLISH",
    "FALLBACK",
    "FRENCH",
    "LANGUAGES",
    "catalogue",
    "describe_wait",
    "error_key",
    "error_message",
    "follow_language",
    "get_language",
    "has_message",
    "locale_dir",
    "message",
    "normalize_language",
    "override",
    "render_letter",
    "render_purge_report",
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
# The host framework's active language (follow_language), asked when no block chose one.
_language_source: Callable[[], str | None] | None = None


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


def _translated(entries: Iterable[Message]) -> dict[str, str]:
    """The translated entries of a catalogue read by Babel, ``msgid`` to ``msgstr``.

    Left out, as from a compiled ``.mo``: the header, fuzzy entries and
    entries without translation.
    """
    return {entry.id: entry.string for entry in entries
            if isinstance(entry.id, str) and entry.id
            and isinstance(entry.string, str) and entry.string and not entry.fuzzy}


def _load(language: str) -> Mapping[str, str]:
    """The shipped catalogue of *language*: the compiled ``.mo``, else the ``.po``."""
    folder = resources.files("account_merge") / "locale" / language / "LC_MESSAGES"
    mo = folder / f"{DOMAIN}.mo"
    if mo.is_file():
        from babel.messages.mofile import read_mo  # noqa: PLC0415 - read when first needed

        with mo.open("rb") as file:
            entries = read_mo(file)
    else:
        from babel.messages.pofile import read_po  # noqa: PLC0415 - read when first needed

        with (folder / f"{DOMAIN}.po").open("rb") as file:
            entries = read_po(file, abort_invalid=True)
    return MappingProxyType(_translated(entries))


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
    """The language messages are given in when none is asked for.

    In order: the language of the enclosing :func:`using_language` block,
    else the host framework's active language (:func:`follow_language`)
    when it is one of :data:`LANGUAGES`, else the process's
    (:func:`set_language`).
    """
    chosen = _context_language.get()
    if chosen is not None:
        return chosen
    source = _language_source
    if source is not None:
        active = source()
        code = normalize_language(active) if isinstance(active, str) else None
        if code is not None:
            return code
    return _process_language


def follow_language(source: Callable[[], str | None] | None) -> None:
    """Give messages in the language *source* says is active, for this process.

    *source* is a zero-argument callable returning a language tag or None,
    such as Django's ``django.utils.translation.get_language``, which the
    Django app installs when it starts: then :func:`error_message` and
    :func:`message` follow the request's language (``LANGUAGE_CODE``,
    ``LocaleMiddleware``, ``translation.override``).  A language without
    catalogue, or None, falls back to :func:`set_language`'s; a
    :func:`using_language` block still wins.  ``None`` stops following.
    """
    global _language_source  # noqa: PLW0603
    if source is not None and not callable(source):
        raise InvalidInput("source", "must be a callable returning a language, or None")
    _language_source = source


@contextmanager
def using_language(language: str | None) -> Iterator[str]:
    """Give messages in *language* inside the block (this thread or task only).

    For a host serving both languages: wrap a request in it, with the
    language the user chose.  A language without catalogue (or None)
    falls back as :func:`get_language` says.  Yields the language in use.
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
    >>> print(error_message(TooManyAttempts(retry_after=119), "en"))
    too many attempts; try again in 2 minutes.
    Check the login and password, or use “forgot password?”
    >>> error_message(PasswordPolicyError(rule="sequential"), "en")
    'the password must not be a sequence of characters (abcd, 1234, qwerty)'

    The message of ``too_many_attempts`` has one more field, ``{wait}``:
    ``retry_after`` as :func:`describe_wait` says it.  A password refused
    by the password policy gets the message of the rule that refused it
    (:func:`error_key`).  A code without message (an error of a newer
    release, say) gives the generic message of :data:`FALLBACK`.
    """
    fields = {k: v for k, v in vars(error).items() if k != "message"}
    if isinstance(error, TooManyAttempts):
        fields["wait"] = describe_wait(error.retry_after, language)
    return message(error_key(error.code, getattr(error, "rule", None)), language, **fields)


#: Waits of up to this many seconds are "a few seconds".
_FEW_SECONDS: Final = 10

#: A wait is told in the largest unit it makes at least this much of (0.9 hour: "about 1 hour").
_THRESHOLD: Final = 0.85

#: Told in its unit, a wait is rounded to the nearest, but never below this share of it (%).
_AT_LEAST_PERCENT: Final = 85

#: From these units on, a rounded wait is "about" so long.
_COARSE_UNITS: Final = frozenset({"hour", "day", "week", "month", "year"})


def describe_wait(seconds: float, language: str | None = None) -> str:
    """How long *seconds* is, as a person would say it: ``"environ 1 heure"``.

    >>> describe_wait(3574, "en"), describe_wait(119, "en"), describe_wait(5, "en")
    ('about 1 hour', '2 minutes', 'a few seconds')

    Up to 10 seconds it is "a few seconds".  A longer wait is told in the
    largest unit it makes at least 0.85 of (second, minute, hour, day,
    week, month, year), rounded to the nearest whole number but never
    below 85 % of the wait, so that a parent who comes back when told is
    not refused again for long: 119 s is "2 minutes", never "1 minute".
    A wait told in hours or more is "about" so long, unless it is exact.
    The words of each unit and their plural come from Babel (the CLDR
    data); in French the number and its unit are joined by a no-break
    space.  *language* is chosen as for :func:`message`.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) \
            or not math.isfinite(seconds):
        raise InvalidInput("seconds", "must be a finite number of seconds")
    code = (normalize_language(language) if language is not None else None) or get_language()
    wait = max(0, math.ceil(seconds))
    if wait <= _FEW_SECONDS:
        return message("wait.few_seconds", code)

    from babel.dates import TIMEDELTA_UNITS, format_timedelta  # noqa: PLC0415 - when first needed

    unit, size = next((unit, size) for unit, size in TIMEDELTA_UNITS
                      if wait >= _THRESHOLD * size)
    nearest = (2 * wait + size) // (2 * size)
    at_least = -(-_AT_LEAST_PERCENT * wait // (100 * size))  # rounded up
    count = max(nearest, at_least)
    # count × size is a whole number of *unit*, less than one of the next
    # unit: with threshold 1, Babel words it in that unit as it is.
    duration = format_timedelta(count * size, threshold=1, locale=code)
    if code == "fr":
        duration = duration.replace(" ", "\u00a0")
    if unit in _COARSE_UNITS and count * size != wait:
        return message("wait.about", code, duration=duration)
    return duration


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


def render_purge_report(report: PurgeReport, language: str | None = None) -> str:
    """What a purge did (or, in a dry run, would do), a title and one line per kind."""
    data = report.to_dict()
    title = message("cli.purge.dry_run_title" if report.dry_run else "cli.purge.done_title",
                    language)
    counts = message("cli.purge.report", language, **data["deleted"],
                     **{k: v for k, v in data.items() if k != "deleted"})
    return f"{title}\n{counts}"


def render_letter(letter: NotificationLetter, language: str | None = None) -> str:
    """The text of *letter* in *language*, provisional password included.

    In French it is exactly :meth:`NotificationLetter.render`, which names
    the establishment with its article (« proposés par le Collège des Trois
    Rivières »: :func:`~account_merge.domain.letter.establishment_with_article`).
    """
    names = _names([f"{c.first_name} {c.last_name}" for c in letter.children], language)
    school = letter.establishment
    code = (normalize_language(language) if language is not None else None) or get_language()
    # French says « proposés par le Collège ... »: the name with its article.
    establishment = establishment_with_article(school.name) if code == "fr" else school.name
    for_children = message("letter.for_children", language, names=names) if names else ""
    return (
        f"{school.name} ({school.uai})\n"
        + message("letter.attention", language, name=letter.display_name) + "\n\n"
        + message("letter.intro", language) + "\n\n"
        + message("letter.body", language, establishment=establishment,
                  for_children=for_children) + "\n\n"
        + message("letter.login", language, login=letter.login) + "\n"
        + message("letter.password", language,
                  password=letter.provisional_password.reveal()) + "\n\n"
        + message("letter.footnote", language, expires=letter.expires_at) + "\n"
    )
