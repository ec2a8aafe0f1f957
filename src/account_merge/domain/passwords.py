"""Provisional passwords and the policy for passwords chosen by parents."""

from __future__ import annotations

import functools
import gzip
import math
import re
import secrets
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from importlib import resources
from typing import Protocol

import attrs

from account_merge.exceptions import PasswordPolicyError

__all__ = [
    "COMMON_PASSWORDS_FILE",
    "MAX_PASSWORD_LENGTH",
    "PROVISIONAL_ALPHABET",
    "CnilPasswordPolicy",
    "PasswordPolicy",
    "common_passwords",
    "fold",
    "generate_provisional_password",
    "list_form",
    "provisional_entropy_bits",
]

#: Upper-case letters and digits without the look-alikes I, O, 0 and 1.
PROVISIONAL_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"

#: Longer passwords are refused before any hashing (a denial-of-service guard).
MAX_PASSWORD_LENGTH = 1024

#: The list of common passwords, a resource of this package: one entry a
#: line, in :func:`list_form`, gzip-compressed.  Written by
#: ``tools/build_common_passwords.py``; never edit it by hand.
COMMON_PASSWORDS_FILE = "common_passwords.txt.gz"


def generate_provisional_password(length: int = 8) -> str:
    """A random provisional password, like the seed's ``2BUYJ9C8``.

    Drawn with :mod:`secrets` from :data:`PROVISIONAL_ALPHABET` (32
    symbols, 5 bits each): 8 characters carry 40 bits.
    """
    return "".join(secrets.choice(PROVISIONAL_ALPHABET) for _ in range(length))


def provisional_entropy_bits(length: int) -> float:
    """Entropy in bits of a provisional password of *length* characters."""
    return length * math.log2(len(PROVISIONAL_ALPHABET))


class PasswordPolicy(Protocol):
    """**Protocol:** decides whether a new password may be used.

    ``check`` raises :class:`~account_merge.exceptions.PasswordPolicyError`
    (with a ``rule`` saying which rule refused, if it can) and returns
    nothing otherwise.  *login* is the account's login; *context* holds
    other texts the password must not contain: the account's display
    name, its e-mail address (only the part before the ``@`` counts).
    """

    def check(self, password: str, *, login: str, context: Sequence[str] = ()) -> None: ...


# -- comparing texts ---------------------------------------------------------------------

#: Letters that Unicode does not decompose, spelt as French keyboards spell them.
_LIGATURES = str.maketrans({"œ": "oe", "æ": "ae", "ø": "o", "ł": "l", "đ": "d", "ð": "d",
                            "þ": "th", "ı": "i"})

#: Leetspeak read back as letters; "1" is read both as "i" and as "l".
_LEET = (
    str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b",
                   "@": "a", "$": "s", "!": "i", "|": "l", "€": "e", "+": "t"}),
    str.maketrans({"0": "o", "1": "l", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b",
                   "@": "a", "$": "s", "!": "i", "|": "l", "€": "e", "+": "t"}),
)

#: The characters leetspeak uses for letters.
_LEET_CHARACTERS = re.compile("[" + re.escape("".join(map(chr, _LEET[0]))) + "]")

#: Accents and other marks that combine with Latin letters (other scripts keep theirs).
_ACCENTS = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]+")

_NOT_ALNUM = re.compile(r"[\W_]+")
_LETTERS = re.compile(r"[^\W\d_]+")

#: How many characters of digits and symbols at each end may belong to a listed
#: entry (``1q2w3e4r``, ``01011990``); beyond, they are only stuck on.
_AFFIX_SCAN = 8

#: The shortest text the patterns look at, and the shortest context word
#: looked for inside other words (three-letter names count as whole words).
_MIN_PATTERN = 4
_MIN_INSIDE = 4
_MIN_WORD = 3

#: A password of ``min_length`` characters or more uses at least this many different ones.
_MIN_DIFFERENT = 5

_CONTROL = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})


def fold(text: str) -> str:
    """*text* in the form passwords are compared in.

    NFKC (full-width and other compatibility forms become plain
    characters), case folding, then accents and ligatures dropped (``é``
    is ``e``, ``œ`` is ``oe``, ``ß`` is ``ss``).

    >>> fold("Ｃｈéｒｉｅ Œuvre")
    'cherie oeuvre'
    """
    folded = unicodedata.normalize("NFKC", text).casefold()
    if folded.isascii():
        return folded
    bare = _ACCENTS.sub("", unicodedata.normalize("NFKD", folded))
    return unicodedata.normalize("NFKC", bare).translate(_LIGATURES)


def list_form(text: str) -> str:
    """*text* folded (:func:`fold`), with only its letters and digits: a list entry.

    >>> list_form("Mot de passe")
    'motdepasse'
    """
    return _NOT_ALNUM.sub("", fold(text))


@functools.cache
def common_passwords() -> frozenset[str]:
    """The shipped list of common passwords, in :func:`list_form`.

    Read from :data:`COMMON_PASSWORDS_FILE` the first time it is needed,
    then kept for the life of the process.
    """
    data = resources.files("account_merge.domain").joinpath(COMMON_PASSWORDS_FILE).read_bytes()
    return frozenset(gzip.decompress(data).decode("utf-8").split())


def _squeeze(text: str) -> str:
    return _NOT_ALNUM.sub("", text)


class _Typed:
    """A folded password and what the rules read in it, worked out once.

    ``readings``: the password as typed and with leetspeak read back (same
    length, same places); ``squeezed``: each reading with only its letters
    and digits; ``span``: where its letters start and end, if it has any.
    """

    def __init__(self, folded: str) -> None:
        self.folded = folded
        leet = (folded.translate(table) for table in _LEET) if (
            _LEET_CHARACTERS.search(folded)) else ()
        self.readings = tuple(dict.fromkeys((folded, *leet)))
        self.squeezed = tuple(_squeeze(text) for text in self.readings)
        first = next((k for k, ch in enumerate(folded) if ch.isalpha()), None)
        self.span = None if first is None else (
            first, next(k + 1 for k in range(len(folded) - 1, -1, -1) if folded[k].isalpha()))

    def forms(self) -> list[str]:
        """The forms looked up in the list.

        Each keeps all the letters of the password and at most
        :data:`_AFFIX_SCAN` of the digits and symbols next to them at each
        end (a listed ``azerty123`` or ``1q2w3e4r`` keeps some), squeezed,
        in every reading.  A password without letters gives its slices that
        drop up to :data:`_AFFIX_SCAN` characters at each end.
        """
        n = len(self.folded)
        if self.span is None:
            starts = range(min(n, _AFFIX_SCAN) + 1)
            ends = range(max(0, n - _AFFIX_SCAN), n + 1)
        else:
            first, last = self.span
            starts = range(max(0, first - _AFFIX_SCAN), first + 1)
            ends = range(last, min(n, last + _AFFIX_SCAN) + 1)
        inner_from, inner_to = starts[-1], ends[0]
        forms: dict[str, None] = {}
        for text in self.readings:
            if inner_from <= inner_to:
                # The long part in the middle is squeezed once, not once per slice.
                middle = _squeeze(text[inner_from:inner_to])
                heads = [_squeeze(text[i:inner_from]) for i in starts]
                tails = [_squeeze(text[inner_to:j]) for j in ends]
                found: Iterable[str] = (head + middle + tail for head in heads for tail in tails)
            else:  # a short text without letters
                found = (_squeeze(text[i:j]) for i in starts for j in ends if j > i)
            forms.update(dict.fromkeys(form for form in found if form))
        return list(forms)

    def shapes(self) -> list[str]:
        """What the patterns look at: the folded password, then each reading
        squeezed, whole and without the digits and symbols at its ends."""
        shapes = [self.folded, *self.squeezed]
        if self.span is not None:
            first, last = self.span
            shapes.extend(_squeeze(text[first:last]) for text in self.readings)
        return list(dict.fromkeys(shapes))

    def holds(self, squeezed: str) -> bool:
        """True if a squeezed reading holds *squeezed* (four characters or more)."""
        return len(squeezed) >= _MIN_INSIDE and any(squeezed in text for text in self.squeezed)

    def mentions(self, text: str) -> bool:
        """True if the password holds *text* (folded), whole or one of its words.

        Words of three letters count only as whole words of the password
        (``lea`` in ``lea2015``, not in ``please``); shorter ones not at all.
        """
        if self.holds(_squeeze(text)):
            return True
        for word in _LETTERS.findall(text):
            if len(word) >= _MIN_INSIDE and self.holds(word):
                return True
            if _MIN_WORD <= len(word) < _MIN_INSIDE and word in self.words:
                return True
        return False

    @functools.cached_property
    def words(self) -> frozenset[str]:
        """The words (runs of letters) of every reading."""
        return frozenset(word for text in self.readings for word in _LETTERS.findall(text))


def _period(text: str) -> str | None:
    """The shortest piece *text* repeats (``soleil`` in ``soleilsoleil``), if any."""
    shift = (text + text).find(text, 1)
    return text[:shift] if 0 < shift < len(text) else None


# -- repetitive and sequential strings ------------------------------------------------------

#: The tracks a run follows one step at a time, either way: the alphabet, the
#: digits, and the rows of the AZERTY and QWERTY keyboards.
_TRACKS = (
    "abcdefghijklmnopqrstuvwxyz",
    "0123456789",
    "1234567890",
    "azertyuiop",
    "qsdfghjklm",
    "wxcvbn",
    "qwertyuiop",
    "asdfghjkl",
    "zxcvbnm",
    "!@#$%^&*()",
)


def _positions() -> dict[str, tuple[tuple[str, int], ...]]:
    found: dict[str, list[tuple[str, int]]] = {}
    for track in _TRACKS:
        for index, ch in enumerate(track):
            found.setdefault(ch, []).append((track, index))
    return {ch: tuple(places) for ch, places in found.items()}


#: Where each character stands on the tracks.
_ON_TRACKS = _positions()


def _run(text: str, start: int) -> tuple[int, bool]:
    """The longest run at *start*, and whether it repeats one character."""
    k = start + 1
    while k < len(text) and text[k] == text[start]:
        k += 1
    longest, same = k - start, True
    for track, index in _ON_TRACKS.get(text[start], ()):
        for step in (1, -1):
            k, at = start + 1, index + step
            while k < len(text) and 0 <= at < len(track) and text[k] == track[at]:
                k, at = k + 1, at + step
            if k - start > longest:
                longest, same = k - start, False
    return longest, same


def _pattern(text: str) -> str | None:
    """``repetitive`` or ``sequential`` if *text* is runs of three or more characters.

    A run repeats one character (``aaaa``) or follows a track
    (``abcd``, ``4321``, ``azerty``, ``poiuy``); ``aaaa1111`` is repetitive,
    ``azerty123`` and ``abcabcabc`` are sequential.
    """
    if len(text) < _MIN_PATTERN:
        return None
    start, repeats_only = 0, True
    while start < len(text):
        length, same = _run(text, start)
        if length < 3:
            return None
        repeats_only = repeats_only and same
        start += length
    return "repetitive" if repeats_only else "sequential"


# -- the login and the context ---------------------------------------------------------------


def _context_texts(context: Sequence[str]) -> Iterator[str]:
    for text in context:
        if isinstance(text, str) and text:
            yield fold(text.rpartition("@")[0] if "@" in text else text)


# -- the policy ------------------------------------------------------------------------------


def _classes(password: str) -> set[str]:
    found = set()
    for ch in password:
        if ch.islower():
            found.add("lower")
        elif ch.isupper():
            found.add("upper")
        elif ch.isdigit():
            found.add("digit")
        elif not unicodedata.category(ch).startswith("C"):
            found.add("special")
    return found


@attrs.frozen
class CnilPasswordPolicy:
    """CNIL délibération 2022-100, case of a password used alone, and NIST SP 800-63B.

    The CNIL asks for about 80 bits of entropy and gives equivalent rules;
    this policy accepts a password that follows one of them:

    - at least 12 characters with upper case, lower case, digits and
      special characters;
    - at least 14 characters with upper case, lower case and digits;
    - at least 20 characters of any kind (a passphrase of several words).

    Before those, and whatever its length, it refuses a guessable password
    (NIST SP 800-63B 5.1.1.2), comparing texts after NFKC normalisation,
    case folding and without accents (:func:`fold`):

    - ``contains_login``: the login, or a name in it (``robert`` for
      ``claire.robert``);
    - ``contains_context``: a word of *context* (the display name, the
      e-mail's part before the ``@``);
    - ``repetitive``, ``sequential``: runs of one character, of the
      alphabet, of digits or along a keyboard row (``aaaa``, ``1234``,
      ``abcd``, ``azerty``);
    - ``common_password``: a password of the shipped list
      (:func:`common_passwords`), even with digits or symbols stuck on
      its ends, in leetspeak, or typed several times in a row;
    - ``repetitive``: a piece shorter than ``min_length`` typed again and
      again, or ``min_length`` characters or more with fewer than 5
      different ones.

    It always refuses more than :data:`MAX_PASSWORD_LENGTH` characters and
    control characters, first.  Each refusal carries its rule in
    :attr:`PasswordPolicyError.rule <account_merge.exceptions.PasswordPolicyError.rule>`.
    """

    min_length: int = 12

    def check(self, password: str, *, login: str, context: Sequence[str] = ()) -> None:
        """Raise ``PasswordPolicyError`` unless *password* may be used."""
        if len(password) > MAX_PASSWORD_LENGTH:
            raise PasswordPolicyError(
                f"the password must be at most {MAX_PASSWORD_LENGTH} characters",
                rule="too_long", limit=MAX_PASSWORD_LENGTH)
        if any(unicodedata.category(ch) in _CONTROL for ch in password):
            raise PasswordPolicyError("the password must not contain control characters",
                                      rule="control_characters")
        typed = _Typed(fold(password))
        self._check_context(typed, login, context)
        self._check_guessable(typed)
        self._check_length(password)

    def _check_context(self, typed: _Typed, login: str, context: Sequence[str]) -> None:
        own = fold(login)
        if own and (own in typed.folded or typed.mentions(own)):
            raise PasswordPolicyError("the password must not contain the login or a name in it",
                                      rule="contains_login")
        if any(typed.mentions(text) for text in _context_texts(context)):
            raise PasswordPolicyError(
                "the password must not contain the account's name or e-mail address",
                rule="contains_context")

    def _check_guessable(self, typed: _Typed) -> None:
        shapes = typed.shapes()
        for shape in shapes:
            found = _pattern(shape)
            if found == "repetitive":
                raise PasswordPolicyError("the password repeats the same characters",
                                          rule="repetitive")
            if found == "sequential":
                raise PasswordPolicyError(
                    "the password is a sequence of characters (abcd, 1234, azerty)",
                    rule="sequential")
        listed = common_passwords()
        if any(form in listed or _period(form) in listed for form in typed.forms()):
            raise PasswordPolicyError(
                "the password is too common (or a common one with digits or symbols around)",
                rule="common_password")
        for shape in shapes:
            piece = _period(shape)
            if piece is not None and len(piece) < self.min_length and len(shape) >= _MIN_PATTERN:
                raise PasswordPolicyError("the password repeats a shorter piece",
                                          rule="repetitive")
        if len(set(typed.folded)) < _MIN_DIFFERENT and len(typed.folded) >= self.min_length:
            raise PasswordPolicyError("the password repeats the same few characters",
                                      rule="repetitive")

    def _check_length(self, password: str) -> None:
        n = len(password)
        if n < self.min_length:
            raise PasswordPolicyError(f"the password must be at least {self.min_length} "
                                      "characters", rule="too_short", limit=self.min_length)
        classes = _classes(password)
        if n >= 20:
            return
        if n >= 14 and {"lower", "upper", "digit"} <= classes:
            return
        if n >= 12 and {"lower", "upper", "digit", "special"} <= classes:
            return
        raise PasswordPolicyError(
            "the password needs 12 characters with upper and lower case, digits and "
            "special characters, or 14 with upper and lower case and digits, or 20 of any kind",
            rule="character_classes")
