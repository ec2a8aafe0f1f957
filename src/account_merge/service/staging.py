"""The register being synced, staged on disk: checked, grouped by responsable, looked up by batch.

A sync reads the establishment's register once, whatever its order, into
a temporary SQLite file (the standard library's, deleted at the end):
one row per entry read, a few bytes of memory whatever the register's
size.  Then it checks what can only be checked on the whole (an external
id with two names or two e-mails, a child with two names), and answers,
a batch of ids at a time, what the register says of a responsable
(:meth:`StagedRegister.listings`), whether it lists a child
(:meth:`StagedRegister.enrolled`), and which responsables the store did
not know (:meth:`StagedRegister.unseen`).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from types import TracebackType
from typing import Self

from account_merge.domain.child import Child
from account_merge.domain.register import (
    Listing,
    RegisterEntry,
    RegisterProblem,
    RegisterRecord,
)
from account_merge.exceptions import InvalidInput, InvalidRegister

__all__ = ["RawListing", "StagedRegister", "raw_listing"]

#: What a listing is compared as: (name, e-mail, ((child id, first name, last name), ...)),
#: children sorted by id.  Comparing these plain tuples costs no object per child.
RawListing = tuple[str, str | None, tuple[tuple[str, str, str], ...]]

#: Rows written per ``executemany``.
_CHUNK = 5000
#: Ids per ``IN (...)`` lookup.
_LOOKUP = 500

_SCHEMA = """
CREATE TABLE rows (seq INTEGER PRIMARY KEY, ext TEXT NOT NULL, name TEXT NOT NULL,
                   email TEXT, line INTEGER, child TEXT NOT NULL, first TEXT NOT NULL,
                   last TEXT NOT NULL);
"""

_GROUP = """
CREATE INDEX rows_ext ON rows (ext, seq);
CREATE INDEX rows_child ON rows (child, seq);
CREATE TABLE entries (ext TEXT PRIMARY KEY, name TEXT NOT NULL, email TEXT,
                      line INTEGER, seen INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
INSERT INTO entries (ext, name, email, line)
    SELECT r.ext, r.name,
           (SELECT e.email FROM rows e WHERE e.ext = r.ext AND e.email IS NOT NULL
            ORDER BY e.seq LIMIT 1),
           r.line
    FROM rows r WHERE r.seq = (SELECT MIN(f.seq) FROM rows f WHERE f.ext = r.ext);
CREATE TABLE children (ext TEXT NOT NULL, child TEXT NOT NULL, first TEXT NOT NULL,
                       last TEXT NOT NULL, PRIMARY KEY (ext, child)) WITHOUT ROWID;
INSERT OR IGNORE INTO children SELECT ext, child, first, last FROM rows ORDER BY seq;
CREATE INDEX children_child ON children (child);
"""

#: Lines whose name differs from the first line of the same external id.
_OTHER_NAME = """
SELECT r.line, r.ext, r.name, e.name, e.line FROM rows r JOIN entries e ON e.ext = r.ext
WHERE r.name != e.name ORDER BY r.seq
"""
#: Lines whose e-mail differs from the first e-mail given for the same external id.
_OTHER_EMAIL = """
SELECT r.line, r.ext, r.email, e.email FROM rows r JOIN entries e ON e.ext = r.ext
WHERE r.email IS NOT NULL AND r.email != e.email ORDER BY r.seq
"""
#: Lines naming a child otherwise than the first line that lists it.
_CHILD_DIFFERS = """
SELECT r.line, r.ext, r.child, r.first, r.last, f.first, f.last, f.line
FROM rows r JOIN rows f ON f.seq = (SELECT MIN(g.seq) FROM rows g WHERE g.child = r.child)
WHERE r.first != f.first OR r.last != f.last ORDER BY r.seq
"""


def raw_listing(listing: Listing | RegisterRecord) -> RawListing:
    """What *listing* (or a record) says, as :data:`RawListing`."""
    return (listing.display_name, listing.email,
            tuple((c.id, c.first_name, c.last_name) for c in listing.children))


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    source = iter(items)
    while chunk := list(islice(source, size)):
        yield chunk


class StagedRegister:
    """One establishment's register on disk, for one sync (use it in a ``with`` block)."""

    def __init__(self, establishment_uai: str, folder: str | None = None) -> None:
        self.establishment_uai = establishment_uai
        fd, self._path = tempfile.mkstemp(prefix="account-merge-register-", suffix=".sqlite3",
                                          dir=folder)
        os.close(fd)
        self._db = sqlite3.connect(self._path, isolation_level=None)
        self._db.executescript("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;"
                               "PRAGMA temp_store = FILE; PRAGMA cache_size = -4096;")
        self._db.executescript(_SCHEMA)
        self.problems: list[RegisterProblem] = []
        self.rows = 0
        self.responsables = 0

    # -- life ---------------------------------------------------------------------
    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Delete the file."""
        self._db.close()
        for suffix in ("", "-journal", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path + suffix)

    # -- loading ------------------------------------------------------------------
    def load(self, entries: Iterable[RegisterEntry],
             progress: Callable[[int], None] | None = None) -> None:
        """Read every entry of *entries*, then check and group them.

        Problems (a child of another establishment, an external id with two
        names...) are collected in :attr:`problems`, with those of a reader
        that raised :class:`InvalidRegister` once it had read everything.
        """
        if isinstance(entries, (str, bytes)) or not isinstance(entries, Iterable):
            raise InvalidInput("entries", "must be an iterable of RegisterEntry")
        uai = self.establishment_uai
        batch: list[tuple[str, str, str | None, int | None, str, str, str]] = []
        insert = ("INSERT INTO rows (ext, name, email, line, child, first, last)"
                  " VALUES (?, ?, ?, ?, ?, ?, ?)")
        self._db.execute("BEGIN")
        try:
            for entry in entries:
                if not isinstance(entry, RegisterEntry):
                    raise InvalidInput("entries", "must be an iterable of RegisterEntry")
                for child in entry.children:
                    if child.establishment_uai != uai:
                        self.problems.append(RegisterProblem(
                            entry.line, entry.external_id, "wrong_establishment",
                            f"child {child.id} is listed in {child.establishment_uai}, "
                            f"not in {uai}",
                            (("child", child.id), ("uai", child.establishment_uai))))
                        continue
                    batch.append((entry.external_id, entry.display_name, entry.email,
                                  entry.line, child.id, child.first_name, child.last_name))
                if len(batch) >= _CHUNK:
                    self._db.executemany(insert, batch)
                    self.rows += len(batch)
                    batch.clear()
                    if progress is not None:
                        progress(self.rows)
        except InvalidRegister as error:  # a reader's problems, found once it read all
            self.problems.extend(error.problems)
        if batch:
            self._db.executemany(insert, batch)
            self.rows += len(batch)
        self._db.execute("COMMIT")
        self._db.executescript(_GROUP)
        if progress is not None:
            progress(self.rows)
        self.responsables = self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        self._check()

    def _check(self) -> None:
        for line, ext, name, first, first_line in self._db.execute(_OTHER_NAME):
            self.problems.append(RegisterProblem(
                line, ext, "other_name",
                f"{ext} is named {name!r} here and {first!r} on line {first_line}",
                (("name", name), ("first", first), ("first_line", str(first_line)))))
        for line, ext, email, first in self._db.execute(_OTHER_EMAIL):
            self.problems.append(RegisterProblem(
                line, ext, "other_email", f"{ext} has the e-mail {email!r} here and {first!r}",
                (("email", email), ("first", first))))
        for line, ext, child, first, last, f_first, f_last, f_line in self._db.execute(
                _CHILD_DIFFERS):
            self.problems.append(RegisterProblem(
                line, ext, "child_differs",
                f"child {child} is named {first} {last} here and {f_first} {f_last} "
                f"on line {f_line}",
                (("child", child), ("name", f"{first} {last}"),
                 ("first", f"{f_first} {f_last}"), ("first_line", str(f_line)))))
        self.problems.sort(key=lambda p: (p.line is None, p.line or 0))

    # -- reading --------------------------------------------------------------------
    def raw_listings(self, external_ids: Sequence[str]) -> dict[str, RawListing]:
        """What the register says of these responsables (those it lists)."""
        out: dict[str, RawListing] = {}
        for chunk in _chunks(external_ids, _LOOKUP):
            marks = ",".join("?" * len(chunk))
            heads = {ext: (name, email) for ext, name, email in self._db.execute(
                f"SELECT ext, name, email FROM entries WHERE ext IN ({marks})", chunk)}
            kids: dict[str, list[tuple[str, str, str]]] = {}
            for ext, child, first, last in self._db.execute(
                    f"SELECT ext, child, first, last FROM children WHERE ext IN ({marks})"
                    " ORDER BY ext, child", chunk):
                kids.setdefault(ext, []).append((child, first, last))
            for ext, (name, email) in heads.items():
                out[ext] = (name, email, tuple(kids.get(ext, ())))
        return out

    def listings(self, external_ids: Sequence[str]) -> dict[str, Listing]:
        """What the register says of these responsables, as :class:`Listing`."""
        uai = self.establishment_uai
        return {ext: Listing(name, email, tuple(Child(i, f, last, uai) for i, f, last in kids))
                for ext, (name, email, kids) in self.raw_listings(external_ids).items()}

    def lines(self, external_ids: Sequence[str]) -> dict[str, int | None]:
        """The first line of each of these responsables."""
        out: dict[str, int | None] = {}
        for chunk in _chunks(external_ids, _LOOKUP):
            marks = ",".join("?" * len(chunk))
            out.update(self._db.execute(
                f"SELECT ext, line FROM entries WHERE ext IN ({marks})", chunk).fetchall())
        return out

    def enrolled(self, child_ids: Iterable[str]) -> set[str]:
        """Those of *child_ids* the register lists (for any responsable)."""
        found: set[str] = set()
        for chunk in _chunks(child_ids, _LOOKUP):
            marks = ",".join("?" * len(chunk))
            found.update(row[0] for row in self._db.execute(
                f"SELECT DISTINCT child FROM children WHERE child IN ({marks})", chunk))
        return found

    def mark_seen(self, external_ids: Sequence[str]) -> None:
        """Note these responsables as known to the store."""
        for chunk in _chunks(external_ids, _LOOKUP):
            marks = ",".join("?" * len(chunk))
            self._db.execute(f"UPDATE entries SET seen = 1 WHERE ext IN ({marks})", chunk)

    def unseen(self, size: int) -> Iterator[list[str]]:
        """The responsables the store did not know, by batches of *size*, by external id."""
        after = ""
        while True:
            batch = [row[0] for row in self._db.execute(
                "SELECT ext FROM entries WHERE seen = 0 AND ext > ? ORDER BY ext LIMIT ?",
                (after, size))]
            if not batch:
                return
            yield batch
            after = batch[-1]
