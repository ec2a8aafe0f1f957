"""SIECLE's exports of an établissement (collège, lycée): its responsables and their pupils.

SIECLE (BEE, the establishment's base) exports XML files; two of them make
a register:

- ``ResponsablesAvecAdresses.xml`` (root ``BEE_RESPONSABLES``): under
  ``DONNEES``, ``PERSONNES/PERSONNE`` elements, each with a
  ``PERSONNE_ID`` attribute and ``NOM_DE_FAMILLE`` (older exports:
  ``NOM``), ``PRENOM``, ``MEL``...; and ``RESPONSABLES/RESPONSABLE_ELEVE``
  links, each with ``ELEVE_ID``, ``PERSONNE_ID``, ``RESP_LEGAL`` (1 or 2
  for a legal responsable, 0 for another contact) and ``CODE_PARENTE``;
- ``ElevesSansAdresses.xml`` (or ``ElevesAvecAdresses.xml``; root
  ``BEE_ELEVES``): under ``DONNEES``, ``ELEVES/ELEVE`` elements with an
  ``ELEVE_ID`` attribute and ``NOM_DE_FAMILLE`` (or ``NOM``), ``PRENOM``,
  ``ID_NATIONAL`` (the INE) and, for a pupil who left, ``DATE_SORTIE``.

The links name pupils by ``ELEVE_ID`` only, so the pupils' names come from
the second file: :func:`read_siecle_responsables` takes it as *eleves*, or
finds it beside the first (SIECLE exports them together).  Both files
name the establishment in ``PARAMETRES/UAJ``.

The files are read with :func:`xml.etree.ElementTree.iterparse`, a record
at a time, each record dropped once read; persons, pupils and links go to
a temporary SQLite file (the standard library's), joined there and read
back by responsable, so that an académie's file never loads whole.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Collection, Iterator
from datetime import date, datetime
from pathlib import Path

from account_merge.domain.child import Child
from account_merge.domain.establishment import validate_uai
from account_merge.domain.register import RegisterEntry, RegisterProblem
from account_merge.exceptions import InvalidInput, InvalidRegister
from account_merge.registers.files import RegisterFile, bad_value

__all__ = ["LEGAL_RESPONSABLES", "PUPIL_FILES", "read_siecle_responsables"]

#: ``RESP_LEGAL`` levels read by default: the legal responsables.
LEGAL_RESPONSABLES = (1, 2)
#: The pupils' file looked for beside the responsables' file, in this order.
PUPIL_FILES = ("ElevesSansAdresses.xml", "ElevesAvecAdresses.xml")

_CHUNK = 2000
#: The element of each field the domain names in ``invalid_input``.
_COLUMNS = {"external_id": "PERSONNE_ID", "display_name": "NOM/PRENOM", "email": "MEL",
            "child id": "ELEVE_ID", "child first_name": "ELEVE/PRENOM",
            "child last_name": "ELEVE/NOM"}
_SCHEMA = """
CREATE TABLE pupils (id TEXT PRIMARY KEY, last TEXT, first TEXT, ine TEXT, left_on TEXT);
CREATE TABLE persons (id TEXT PRIMARY KEY, last TEXT, first TEXT, mel TEXT);
CREATE TABLE links (seq INTEGER PRIMARY KEY, pupil TEXT, person TEXT, level TEXT);
"""


def _text(record: ET.Element, *tags: str) -> str:
    for tag in tags:
        found = record.find(tag)
        if found is not None and found.text and found.text.strip():
            return found.text.strip()
    return ""


def _records(path: Path, root_tag: str, wanted: Collection[str]) -> Iterator[ET.Element]:
    """The *wanted* records under ``DONNEES``, each dropped from the tree once yielded.

    The first item is the ``PARAMETRES`` element, if the file has one
    before its data (SIECLE's files do).
    """
    stack: list[ET.Element] = []
    try:
        for event, element in ET.iterparse(path, events=("start", "end")):
            if event == "start":
                if not stack and element.tag != root_tag:
                    raise InvalidRegister([RegisterProblem(
                        None, None, "unreadable",
                        f"{path.name} is not a SIECLE {root_tag} file (its root is "
                        f"{element.tag})", (("file", path.name), ("root", element.tag)))])
                stack.append(element)
                continue
            stack.pop()
            if element.tag == "PARAMETRES" and len(stack) == 1:
                yield element
                stack[0].remove(element)
            elif len(stack) == 3:  # a record: read if wanted, then dropped
                if element.tag in wanted:
                    yield element
                stack[-1].remove(element)
            elif len(stack) == 2 and stack[-1].tag == "DONNEES":
                stack[-1].remove(element)
    except ET.ParseError as error:
        raise InvalidRegister([RegisterProblem(
            error.position[0], None, "unreadable", f"{path.name}: {error}",
            (("file", path.name),))]) from None


def _uaj(path: Path, root_tag: str) -> str | None:
    """The establishment a SIECLE file names (``PARAMETRES/UAJ``), reading no further."""
    for record in _records(path, root_tag, ()):
        if record.tag == "PARAMETRES":
            return _text(record, "UAJ") or None
        break
    return None


def _left(left_on: str, today: date) -> bool:
    try:
        return datetime.strptime(left_on, "%d/%m/%Y").date() <= today
    except ValueError:
        return False


def read_siecle_responsables(
    path: str | os.PathLike[str], *, eleves: str | os.PathLike[str] | None = None,
    levels: Collection[int] = LEGAL_RESPONSABLES, child_ids: str = "eleve_id",
    uai: str | None = None, today: date | None = None,
) -> RegisterFile:
    """The register of SIECLE's ``ResponsablesAvecAdresses.xml``, with the pupils of *eleves*.

    One entry per link kept: the responsable's ``PERSONNE_ID`` is the
    external id, ``PRENOM NOM`` the name, ``MEL`` the e-mail; the child is
    the pupil of ``ELEVE_ID`` as *eleves* names them.  Kept: the links of
    ``RESP_LEGAL`` in *levels* (by default the legal responsables, 1 and
    2; ``levels=(0, 1, 2)`` adds the other contacts), to pupils *eleves*
    lists and who have not left (``DATE_SORTIE`` before or on *today*);
    the others are counted in ``skipped``.  *eleves* defaults to
    ``ElevesSansAdresses.xml`` (or ``ElevesAvecAdresses.xml``) beside
    *path*.  *child_ids* is ``"eleve_id"`` (SIECLE's id, the default) or
    ``"ine"`` (the national id, ``ID_NATIONAL``, which follows the pupil
    from one establishment to the next).  *uai* is for a file that does not
    name its establishment.
    """
    path = Path(path)
    if child_ids not in ("eleve_id", "ine"):
        raise InvalidInput("child_ids", "must be 'eleve_id' or 'ine'")
    wanted_levels = {str(level) for level in levels}
    if eleves is None:
        found = next((path.parent / name for name in PUPIL_FILES
                      if (path.parent / name).is_file()), None)
        if found is None:
            raise InvalidInput("eleves", f"the pupils' file ({' or '.join(PUPIL_FILES)}) is "
                                         f"not beside {path.name}: give it as eleves=")
        eleves = found
    pupils_path = Path(eleves)
    given_uai = validate_uai(uai) if uai is not None else None

    def establishment() -> str | None:
        return given_uai or _uaj(path, "BEE_RESPONSABLES")

    def read(register: RegisterFile) -> Iterator[RegisterEntry | RegisterProblem]:
        with _Staging() as staging:
            school = staging.load_pupils(pupils_path)
            named = staging.load_responsables(path)
            school_uai = given_uai or named or school
            if school_uai is None:
                raise InvalidRegister([RegisterProblem(
                    None, None, "missing_column", f"{path.name} names no establishment (UAJ)",
                    (("column", "UAJ"),))])
            if named and school and named != school and given_uai is None:
                raise InvalidRegister([RegisterProblem(
                    None, None, "wrong_establishment",
                    f"{path.name} is of {named}, {pupils_path.name} of {school}",
                    (("child", pupils_path.name), ("uai", school)))])
            school_uai = validate_uai(school_uai)
            yield from staging.entries(register, school_uai, wanted_levels, child_ids,
                                       today or date.today())

    return RegisterFile(path, "siecle", read, establishment)


class _Staging:
    """Persons, pupils and links of the two files, in a temporary SQLite file."""

    def __enter__(self) -> _Staging:
        fd, self.path = tempfile.mkstemp(prefix="account-merge-siecle-", suffix=".sqlite3")
        os.close(fd)
        self.db = sqlite3.connect(self.path, isolation_level=None)
        self.db.executescript("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;"
                              "PRAGMA cache_size = -4096;" + _SCHEMA)
        return self

    def __exit__(self, *exc: object) -> None:
        self.db.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _insert(self, sql: str, rows: Iterator[tuple[str | None, ...]]) -> None:
        batch: list[tuple[str | None, ...]] = []
        self.db.execute("BEGIN")
        for row in rows:
            batch.append(row)
            if len(batch) >= _CHUNK:
                self.db.executemany(sql, batch)
                batch.clear()
        self.db.executemany(sql, batch)
        self.db.execute("COMMIT")

    def load_pupils(self, path: Path) -> str | None:
        uaj: list[str] = []

        def rows() -> Iterator[tuple[str | None, ...]]:
            for record in _records(path, "BEE_ELEVES", ("ELEVE",)):
                if record.tag == "PARAMETRES":
                    uaj.append(_text(record, "UAJ"))
                    continue
                yield (record.get("ELEVE_ID", "").strip(),
                       _text(record, "NOM_DE_FAMILLE", "NOM"), _text(record, "PRENOM"),
                       _text(record, "ID_NATIONAL") or None, _text(record, "DATE_SORTIE"))

        self._insert("INSERT OR IGNORE INTO pupils VALUES (?, ?, ?, ?, ?)", rows())
        return uaj[0] if uaj and uaj[0] else None

    def load_responsables(self, path: Path) -> str | None:
        uaj: list[str] = []

        def rows() -> Iterator[tuple[str | None, ...]]:
            for record in _records(path, "BEE_RESPONSABLES", ("PERSONNE", "RESPONSABLE_ELEVE")):
                if record.tag == "PARAMETRES":
                    uaj.append(_text(record, "UAJ"))
                elif record.tag == "PERSONNE":
                    yield ("p", record.get("PERSONNE_ID", "").strip(),
                           _text(record, "NOM_DE_FAMILLE", "NOM"), _text(record, "PRENOM"),
                           _text(record, "MEL") or None)
                else:
                    yield ("l", _text(record, "ELEVE_ID"), _text(record, "PERSONNE_ID"),
                           _text(record, "RESP_LEGAL"), None)

        persons: list[tuple[str | None, ...]] = []
        links: list[tuple[str | None, ...]] = []
        self.db.execute("BEGIN")
        for kind, *values in rows():
            (persons if kind == "p" else links).append(tuple(values))
            if len(persons) >= _CHUNK:
                self.db.executemany("INSERT OR IGNORE INTO persons VALUES (?, ?, ?, ?)", persons)
                persons.clear()
            if len(links) >= _CHUNK:
                self.db.executemany("INSERT INTO links (pupil, person, level) VALUES (?, ?, ?)",
                                    [v[:3] for v in links])
                links.clear()
        self.db.executemany("INSERT OR IGNORE INTO persons VALUES (?, ?, ?, ?)", persons)
        self.db.executemany("INSERT INTO links (pupil, person, level) VALUES (?, ?, ?)",
                            [v[:3] for v in links])
        self.db.execute("COMMIT")
        return uaj[0] if uaj and uaj[0] else None

    def entries(self, register: RegisterFile, uai: str, levels: set[str], child_ids: str,
                today: date) -> Iterator[RegisterEntry | RegisterProblem]:
        marks = ",".join("?" * len(levels))
        register.skipped = self.db.execute(
            f"SELECT COUNT(*) FROM links WHERE level NOT IN ({marks})", sorted(levels)
        ).fetchone()[0] if levels else self.db.execute("SELECT COUNT(*) FROM links").fetchone()[0]
        query = (
            "SELECT l.person, p.id, p.last, p.first, p.mel, l.pupil, e.id, e.last, e.first,"
            " e.ine, e.left_on FROM links l"
            " LEFT JOIN persons p ON p.id = l.person LEFT JOIN pupils e ON e.id = l.pupil"
            f" WHERE l.level IN ({marks}) ORDER BY l.person, l.seq")
        for (person, known_person, last, first, mel, pupil, known_pupil, pupil_last,
             pupil_first, ine, left_on) in self.db.execute(query, sorted(levels)):
            if known_pupil is None or _left(left_on or "", today):
                register.skipped += 1
                continue
            if known_person is None:
                detail = f"no PERSONNE has the PERSONNE_ID {person!r}"
                yield RegisterProblem(None, person or None, "bad_value",
                                      f"PERSONNE_ID: {detail}",
                                      (("column", "PERSONNE_ID"), ("detail", detail)))
                continue
            child_id = ine if child_ids == "ine" else pupil
            try:
                child = Child(child_id or "", pupil_first, pupil_last, uai)
                yield RegisterEntry(person, f"{first} {last}".strip(), (child,), mel)
            except InvalidInput as error:
                yield bad_value(None, person or None, _COLUMNS.get(error.field, error.field),
                                error)
