"""Registers and school lists as CSV files, as spreadsheets and exports save them.

Two readers share the way a CSV is opened (UTF-8 with or without BOM, or
Windows-1252; ``;`` or ``,``):

- :func:`read_register_csv`: an establishment's register, one row per
  responsable-child pair, for :meth:`~account_merge.MergeService.sync_register`;
- :func:`read_school_csv`: the rows of ``account-merge issue-batch``,
  checked row by row, gathered in families (one letter each).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from account_merge import messages
from account_merge.domain.child import Child
from account_merge.domain.establishment import validate_uai
from account_merge.domain.register import RegisterEntry, RegisterProblem
from account_merge.domain.validation import check_text
from account_merge.exceptions import InvalidInput, InvalidRegister
from account_merge.registers.errors import error_text
from account_merge.registers.files import RegisterFile, bad_value, detect_encoding

__all__ = [
    "REGISTER_COLUMNS",
    "REGISTER_OPTIONAL_COLUMNS",
    "SCHOOL_CSV_COLUMNS",
    "SchoolBatch",
    "SchoolFamily",
    "open_csv",
    "read_register_csv",
    "read_school_csv",
]

#: The columns every register CSV has (any order, any case).
REGISTER_COLUMNS = ("responsable_id", "responsable_nom", "eleve_id", "eleve_prenom", "eleve_nom")
#: Columns a register CSV may have: the establishment of each row, the responsable's e-mail.
REGISTER_OPTIONAL_COLUMNS = ("uai", "responsable_email")

#: The columns of ``account-merge issue-batch`` (a register CSV with a ``uai`` column).
SCHOOL_CSV_COLUMNS = ("uai", "eleve_id", "eleve_prenom", "eleve_nom", "responsable_id",
                      "responsable_nom")

#: The column of each field the domain names in ``invalid_input``.
_FIELDS = {
    "uai": "uai",
    "child id": "eleve_id",
    "child first_name": "eleve_prenom",
    "child last_name": "eleve_nom",
    "external_id": "responsable_id",
    "display_name": "responsable_nom",
    "responsable_nom": "responsable_nom",
    "email": "responsable_email",
}


def open_csv(handle: TextIO) -> csv.DictReader[str]:
    """A reader of *handle* whose delimiter (``;`` or ``,``) is the header's."""
    header = handle.readline()
    delimiter = ";" if header.count(";") > header.count(",") else ","
    handle.seek(0)
    reader = csv.DictReader(handle, delimiter=delimiter)
    reader.fieldnames = [c.strip() for c in reader.fieldnames or ()]
    return reader


def _cell(row: dict[str | None, Any], column: str) -> str:
    value = row.get(column)
    return value.strip() if isinstance(value, str) else ""


# -- the register -------------------------------------------------------------------------


def read_register_csv(path: str | os.PathLike[str], *, uai: str | None = None,
                      encoding: str | None = None) -> RegisterFile:
    """An establishment's register in a CSV file, one row per responsable-child pair.

    Columns (a header line, any order, any case): ``responsable_id``,
    ``responsable_nom``, ``eleve_id``, ``eleve_prenom``, ``eleve_nom``,
    and optionally ``uai`` (the establishment of the row) and
    ``responsable_email``.  Without a ``uai`` column, *uai* names the
    establishment of every row.  *encoding* None finds it
    (:func:`~account_merge.registers.files.detect_encoding`).  A column
    the format does not have refuses the file (``unknown_column``): a
    misspelt ``responsable_email`` must not silently drop every e-mail.
    """
    path = Path(path)
    if uai is not None:
        uai = validate_uai(uai)

    def first_uai() -> str | None:
        if uai is not None:
            return uai
        for entry in register:
            return entry.children[0].establishment_uai
        return None

    def read(_: RegisterFile) -> Iterator[RegisterEntry | RegisterProblem]:
        with path.open(encoding=encoding or detect_encoding(path), newline="") as handle:
            reader = open_csv(handle)
            columns = [c.lower() for c in reader.fieldnames or ()]
            reader.fieldnames = columns
            unknown = [c for c in columns if c not in (*REGISTER_COLUMNS,
                                                       *REGISTER_OPTIONAL_COLUMNS)]
            missing = [c for c in REGISTER_COLUMNS if c not in columns]
            if uai is None and "uai" not in columns:
                missing.append("uai")
            header = [RegisterProblem(1, None, "unknown_column", f"unknown column {c!r}",
                                      (("column", c),)) for c in unknown]
            header += [RegisterProblem(1, None, "missing_column", f"missing column {c!r}",
                                       (("column", c),)) for c in missing]
            if header:
                raise InvalidRegister(header)
            try:
                for row in reader:
                    yield _register_row(row, reader.line_num, uai, columns)
            except (csv.Error, UnicodeDecodeError) as error:
                yield RegisterProblem(reader.line_num + 1, None, "unreadable", str(error))

    register = RegisterFile(path, "csv", read, first_uai)
    return register


def _register_row(row: dict[str | None, Any], line: int, uai: str | None,
                  columns: list[str]) -> RegisterEntry | RegisterProblem:
    external_id = _cell(row, "responsable_id") or None
    if None in row or any(row.get(c) is None for c in columns):
        return RegisterProblem(line, external_id, "bad_value", "*: wrong number of columns",
                               (("column", "*"), ("detail", "wrong number of columns")))
    try:
        school = validate_uai(_cell(row, "uai")) if "uai" in columns else uai
        assert school is not None
        child = Child(_cell(row, "eleve_id"), _cell(row, "eleve_prenom"),
                      _cell(row, "eleve_nom"), school)
        return RegisterEntry(_cell(row, "responsable_id"), _cell(row, "responsable_nom"),
                             (child,), _cell(row, "responsable_email") or None, line=line)
    except InvalidInput as error:
        return bad_value(line, external_id, _FIELDS.get(error.field, error.field), error)


# -- the school CSV of issue-batch -------------------------------------------------------------


class SchoolFamily:
    """The rows of one letter: a responsable of one establishment and their children."""

    def __init__(self, uai: str, responsable_id: str, name: str, line: int) -> None:
        self.uai = uai
        self.responsable_id = responsable_id
        self.name = name
        self.first_line = line
        self.children: list[Child] = []
        self.child_lines: dict[str, int] = {}
        self.bad_lines: list[int] = []

    def entries(self) -> list[RegisterEntry]:
        """The family as register entries (for a sync of its establishment)."""
        return [RegisterEntry(self.responsable_id, self.name, (child,),
                              line=self.child_lines[child.id]) for child in self.children]


class SchoolBatch:
    """A school's CSV, checked row by row: its families and its bad lines."""

    def __init__(self) -> None:
        self.families: dict[tuple[str, str], SchoolFamily] = {}
        self.errors: list[tuple[int, str]] = []
        self.pupils: dict[str, tuple[Child, int]] = {}

    def bad(self, line: int, message: str, family: SchoolFamily | None) -> None:
        """Note a bad line; it spoils its family."""
        self.errors.append((line, message))
        if family is not None:
            family.bad_lines.append(line)

    @property
    def good(self) -> list[SchoolFamily]:
        """The families without a bad line, in the order of the file."""
        return [f for f in self.families.values() if not f.bad_lines]

    @property
    def refused(self) -> list[SchoolFamily]:
        """The families with a bad line."""
        return [f for f in self.families.values() if f.bad_lines]


#: Says why an establishment cannot be used (it is unknown...), or None if it can.
EstablishmentCheck = Callable[[str], str | None]


def read_school_csv(path: Path, encoding: str | None,
                    check_establishment: EstablishmentCheck) -> SchoolBatch:
    """The school's CSV of ``issue-batch``, every row checked, in families.

    Columns :data:`SCHOOL_CSV_COLUMNS`; *encoding* None finds it.  A bad
    row is reported with its line (in the language of
    :func:`account_merge.messages.get_language`) and spoils its family.
    *check_establishment* is asked once per UAI.  Raises
    :class:`InvalidRegister` for missing columns or an unreadable file.
    """
    with path.open(encoding=encoding or detect_encoding(path), newline="") as handle:
        reader = open_csv(handle)
        columns = list(reader.fieldnames or ())
        missing = [c for c in SCHOOL_CSV_COLUMNS if c not in columns]
        if missing:
            raise InvalidRegister([RegisterProblem(
                1, None, "missing_columns", messages.message(
                    "cli.batch.missing_columns", missing=", ".join(missing),
                    expected=",".join(SCHOOL_CSV_COLUMNS)))])
        batch = SchoolBatch()
        known: dict[str, str | None] = {}
        try:
            for row in reader:
                _check_row(batch, row, reader.line_num, known, check_establishment)
        except (csv.Error, UnicodeDecodeError) as error:
            raise InvalidRegister([RegisterProblem(
                reader.line_num + 1, None, "unreadable", messages.message(
                    "cli.batch.line", line=reader.line_num + 1, message=error))]) from None
    return batch


def _check_row(batch: SchoolBatch, row: dict[str | None, Any], line: int,
               known: dict[str, str | None], check_establishment: EstablishmentCheck) -> None:
    """Check one row; a bad row is reported with its line and spoils its family."""
    responsable_id = _cell(row, "responsable_id")
    name = _cell(row, "responsable_nom")
    key = (_cell(row, "uai").upper(), responsable_id)
    family = batch.families.get(key)
    if family is None and responsable_id:
        family = batch.families[key] = SchoolFamily(key[0], responsable_id, name, line)
    if None in row or any(row.get(c) is None for c in SCHOOL_CSV_COLUMNS):
        batch.bad(line, messages.message("cli.batch.bad_columns"), family)
        return
    if family is None:
        batch.bad(line, messages.message("cli.batch.no_family"), None)
        return
    try:
        uai = validate_uai(key[0])
        if uai not in known:
            known[uai] = check_establishment(uai)
        if known[uai] is not None:
            batch.bad(line, str(known[uai]), family)
            return
        check_text("responsable_nom", name)
        child = Child(_cell(row, "eleve_id"), _cell(row, "eleve_prenom"),
                      _cell(row, "eleve_nom"), uai)
        RegisterEntry(responsable_id, name, (child,))
    except InvalidInput as error:
        column = _FIELDS.get(error.field, error.field)
        batch.bad(line, f"{error_text(error.code, {'field': column})} ({error.code})", family)
        return
    if name != family.name:
        batch.bad(line, messages.message("cli.batch.other_name", line=family.first_line), family)
        return
    if child.id in family.child_lines:
        batch.bad(line, messages.message("cli.batch.pupil_twice", id=child.id,
                                         line=family.child_lines[child.id]), family)
        return
    seen = batch.pupils.get(child.id)
    if seen is not None and seen[0] != child:
        batch.bad(line, messages.message("cli.batch.pupil_differs", id=child.id, line=seen[1]),
                  family)
        return
    batch.pupils.setdefault(child.id, (child, line))
    family.children.append(child)
    family.child_lines[child.id] = line

