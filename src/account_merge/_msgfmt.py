"""Read gettext ``.po`` catalogues and write and read ``.mo`` files.

A small, dependency-free equivalent of GNU ``msgfmt`` for the catalogues
this package ships.  It imports nothing but the standard library, so the
wheel's build hook (``hatch_build.py``) loads it by path, before the
package's own dependencies are installed; at run time
:mod:`account_merge.messages` uses it to read the compiled ``.mo`` files,
or the ``.po`` files themselves when no ``.mo`` was built (an editable
install).

Supported: ``msgid``/``msgstr`` entries, strings continued over several
lines, the usual escapes, comments and flags; entries marked ``fuzzy``
and entries with an empty ``msgstr`` are left out, as ``msgfmt`` does.
Not supported (the catalogues do not use them): ``msgctxt`` and plural
forms, which are refused with :class:`PoSyntaxError`.
"""

from __future__ import annotations

import ast
import struct

__all__ = ["PoSyntaxError", "compile_mo", "parse_po", "read_mo"]

_MAGIC = 0x950412DE
_HEADER = struct.Struct("<7I")


class PoSyntaxError(ValueError):
    """A ``.po`` file this reader cannot understand; the message gives the line."""


def _string(text: str, line: int, source: str) -> str:
    text = text.strip()
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        raise PoSyntaxError(f"{source}:{line}: a quoted string was expected")
    try:
        value = ast.literal_eval(text)
    except (SyntaxError, ValueError) as error:
        raise PoSyntaxError(f"{source}:{line}: {error}") from None
    if not isinstance(value, str):  # pragma: no cover - a quoted literal is a str
        raise PoSyntaxError(f"{source}:{line}: a string was expected")
    return value


def parse_po(text: str, source: str = "<po>") -> dict[str, str]:
    """The translated entries of a ``.po`` file, ``msgid`` to ``msgstr``.

    The header (``msgid ""``) is kept under the empty key, as in a
    ``.mo`` file.
    """
    catalog: dict[str, str] = {}
    msgid: list[str] | None = None
    msgstr: list[str] | None = None
    current: list[str] | None = None
    fuzzy = False
    start = 0

    def flush() -> None:
        nonlocal msgid, msgstr, current, fuzzy
        if msgid is not None:
            if msgstr is None:
                raise PoSyntaxError(f"{source}:{start}: msgid without msgstr")
            key, value = "".join(msgid), "".join(msgstr)
            if key in catalog:
                raise PoSyntaxError(f"{source}:{start}: duplicate msgid {key!r}")
            if value and not fuzzy:
                catalog[key] = value
        msgid = msgstr = current = None
        fuzzy = False

    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            if msgstr is not None:
                flush()
            if line.startswith("#,") and "fuzzy" in line[2:].replace(",", " ").split():
                fuzzy = True
            continue
        if line.startswith(("msgctxt", "msgid_plural", "msgstr[")):
            raise PoSyntaxError(f"{source}:{number}: contexts and plural forms are not supported")
        if line.startswith("msgid "):
            if msgstr is not None:
                flush()
            elif msgid is not None:
                raise PoSyntaxError(f"{source}:{number}: msgid without msgstr before it")
            msgid, start = [_string(line[6:], number, source)], number
            current = msgid
        elif line.startswith("msgstr "):
            if msgid is None or msgstr is not None:
                raise PoSyntaxError(f"{source}:{number}: msgstr without msgid")
            msgstr = [_string(line[7:], number, source)]
            current = msgstr
        elif line.startswith('"'):
            if current is None:
                raise PoSyntaxError(f"{source}:{number}: a string outside an entry")
            current.append(_string(line, number, source))
        else:
            raise PoSyntaxError(f"{source}:{number}: cannot read {line[:30]!r}")
    flush()
    return catalog


def compile_mo(catalog: dict[str, str]) -> bytes:
    """The GNU ``.mo`` form of *catalog* (little-endian, no hash table).

    The layout is the one :mod:`gettext` and GNU tools read: a header,
    the table of original strings sorted by their UTF-8 bytes, the table
    of translations, then the strings, each followed by a NUL.
    """
    entries = sorted((k.encode("utf-8"), v.encode("utf-8")) for k, v in catalog.items())
    count = len(entries)
    originals_at = _HEADER.size
    translations_at = originals_at + 8 * count
    strings_at = translations_at + 8 * count
    originals: list[int] = []
    translations: list[int] = []
    blob = bytearray()
    for key, _ in entries:
        originals += [len(key), strings_at + len(blob)]
        blob += key + b"\0"
    for _, value in entries:
        translations += [len(value), strings_at + len(blob)]
        blob += value + b"\0"
    header = _HEADER.pack(_MAGIC, 0, count, originals_at, translations_at, 0, strings_at)
    tables = struct.pack(f"<{4 * count}I", *originals, *translations)
    return header + tables + bytes(blob)


def read_mo(data: bytes) -> dict[str, str]:
    """The entries of a GNU ``.mo`` file (either byte order), as text.

    Raises :class:`ValueError` for a file that is not a ``.mo`` file.
    """
    if len(data) < _HEADER.size:
        raise ValueError("not a .mo file: too short")
    for order in ("<", ">"):
        (magic,) = struct.unpack_from(f"{order}I", data)
        if magic == _MAGIC:
            break
    else:
        raise ValueError("not a .mo file: bad magic number")
    _, revision, count, originals_at, translations_at = struct.unpack_from(f"{order}5I", data)
    if revision >> 16 not in (0, 1):
        raise ValueError(f"unsupported .mo revision {revision}")
    catalog: dict[str, str] = {}
    try:
        for i in range(count):
            key_len, key_at = struct.unpack_from(f"{order}2I", data, originals_at + 8 * i)
            value_len, value_at = struct.unpack_from(f"{order}2I", data, translations_at + 8 * i)
            if key_at + key_len > len(data) or value_at + value_len > len(data):
                raise ValueError("not a .mo file: a string lies past the end")
            key = data[key_at:key_at + key_len].decode("utf-8")
            catalog[key] = data[value_at:value_at + value_len].decode("utf-8")
    except struct.error:
        raise ValueError("not a .mo file: truncated tables") from None
    return catalog
