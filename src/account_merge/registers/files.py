"""What the readers share: a register read from files, its encoding, its problems."""

from __future__ import annotations

import codecs
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from account_merge.domain.register import RegisterEntry, RegisterProblem
from account_merge.exceptions import InvalidInput, InvalidRegister

__all__ = ["RegisterFile", "bad_value", "detect_encoding"]

#: Bytes read at a time when checking an encoding.
_BLOCK = 1 << 16


def detect_encoding(path: str | os.PathLike[str]) -> str:
    """``utf-8-sig`` if the whole file is UTF-8 (with or without BOM), else ``cp1252``.

    Spreadsheets save CSV in Windows-1252 as often as in UTF-8; a file that
    decodes as UTF-8 from end to end is UTF-8 (Windows-1252 text with
    accents almost never does).  The file is read once, a block at a time.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    with open(path, "rb") as handle:
        try:
            while block := handle.read(_BLOCK):
                decoder.decode(block)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return "cp1252"
    return "utf-8-sig"


def bad_value(line: int | None, external_id: str | None, column: str,
              error: InvalidInput) -> RegisterProblem:
    """A problem ``bad_value`` for a value of *column* the domain refused with *error*."""
    detail = error.message.removeprefix(f"{error.field}: ")
    return RegisterProblem(line, external_id, "bad_value", f"{column}: {detail}",
                           (("column", column), ("detail", detail)))


class RegisterFile:
    """A register read from files: iterate it for its entries, as often as needed.

    Each iteration reads the files again, a record at a time (the files
    never load whole), and yields one :class:`RegisterEntry` per
    responsable-child pair, with its line where the format has lines.
    Problems of single records (an empty name, an id with spaces) do not
    stop the iteration: once everything is read, they are raised together
    as :class:`~account_merge.exceptions.InvalidRegister` (a sync adds its
    own and refuses the register whole).  A problem of the whole file (a
    column nobody knows, the wrong kind of file) is raised at once.

    ``establishment_uai`` is the establishment the file says it is (None
    when it does not say); ``skipped`` counts, after an iteration, the
    records left out on purpose (responsables who are not legal ones,
    pupils who have left).
    """

    def __init__(self, path: str | os.PathLike[str], kind: str,
                 read: Callable[[RegisterFile], Iterator[RegisterEntry | RegisterProblem]],
                 establishment_uai: Callable[[], str | None]) -> None:
        self.path = Path(path)
        self.kind = kind
        self._read = read
        self._uai = establishment_uai
        self.skipped = 0

    @property
    def establishment_uai(self) -> str | None:
        """The UAI the file names (read from the file), or None."""
        return self._uai()

    def __iter__(self) -> Iterator[RegisterEntry]:
        self.skipped = 0
        problems: list[RegisterProblem] = []
        for item in self._read(self):
            if isinstance(item, RegisterProblem):
                problems.append(item)
            else:
                yield item
        if problems:
            raise InvalidRegister(problems)

    def __repr__(self) -> str:
        return f"RegisterFile({str(self.path)!r}, kind={self.kind!r})"
