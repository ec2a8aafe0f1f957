"""The jobs an establishment runs on its files, for the command line and Django's commands.

- :func:`sync_file`: sync the establishment with its register: preview
  it as a table, ask, apply, write each new letter to a folder;
- :func:`issue_batch`: the letters of a school's CSV (``issue-batch``),
  without a second letter for a responsable it already issued one.

Both write their texts in the language of
:func:`account_merge.messages.get_language`, report errors as
:class:`~account_merge.registers.errors.JobError` or the library's own,
and never touch the store but through the service.
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Protocol

from account_merge import messages
from account_merge.domain.establishment import Establishment
from account_merge.domain.letter import NotificationLetter
from account_merge.domain.register import (
    RegisterEntry,
    RegisterLetter,
    RegisterProblem,
    SyncReport,
)
from account_merge.exceptions import AccountNotFound, InvalidRegister, NotSupported
from account_merge.registers.errors import EXIT_USAGE, JobError, error_text
from account_merge.registers.files import RegisterFile
from account_merge.registers.siecle import LEGAL_RESPONSABLES, read_siecle_responsables
from account_merge.registers.tables import SchoolFamily, read_register_csv, read_school_csv
from account_merge.service import MergeService

__all__ = [
    "INDEX_FILE",
    "LetterFolder",
    "Output",
    "ProgressBar",
    "format_report",
    "issue_batch",
    "open_register",
    "problem_lines",
    "sync_file",
]

#: The index of a folder of letters (no password in it).
INDEX_FILE = "courriers.csv"
#: Lines of each section a preview shows (the counts are always whole).
SHOWN = 25


def _(key: str, **fields: object) -> str:
    return messages.message(key, **fields)


class Output(Protocol):
    """Where a job writes: a text stream (a file, ``sys.stdout``, a Django command's)."""

    def write(self, text: str, /) -> Any: ...

    def flush(self) -> Any: ...

    def isatty(self) -> bool: ...


class ProgressBar:
    """A progress bar on *stream* (a line every tenth when it is not a terminal)."""

    def __init__(self, total: int, stream: Output, label: str | None = None) -> None:
        self.total = total
        self.stream = stream
        self.label = label if label is not None else _("cli.batch.progress")
        self.tty = stream.isatty()
        self._shown = -1

    def after(self, before: int) -> Callable[[int], None]:
        """A progress callback for a batch that follows *before* items already done."""
        return lambda done: self.update(before + done)

    def update(self, done: int) -> None:
        """Show *done* of the total."""
        step = done * (100 if self.tty else 10) // max(1, self.total)
        if step == self._shown and done != self.total:
            return
        self._shown = step
        width = 30
        filled = width * min(done, self.total) // max(1, self.total)
        bar = "█" * filled + "·" * (width - filled)
        text = f"{self.label} [{bar}] {done}/{self.total}"
        if self.tty:
            end = "\n" if done == self.total else ""
            print(f"\r{text}", end=end, file=self.stream, flush=True)
        else:
            print(text, file=self.stream, flush=True)


class _Stages:
    """The progress of a sync, a bar per stage (a count where the total is not known)."""

    def __init__(self, stream: Output) -> None:
        self.stream = stream
        self.bar: ProgressBar | None = None
        self.stage = ""
        self.last_count = -1

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        label = _(f"sync.progress.{stage}")
        if total is not None:
            if self.bar is None or self.stage != stage:
                self.bar = ProgressBar(total, self.stream, label)
            self.stage = stage
            self.bar.update(done)
            return
        self.stage, self.bar = stage, None
        if self.stream.isatty():
            print(f"\r{label} : {done}", end="", file=self.stream, flush=True)
        elif done // 10_000 != self.last_count:
            self.last_count = done // 10_000
            print(f"{label} : {done}", file=self.stream, flush=True)

    def end(self) -> None:
        if self.stream.isatty() and self.bar is None and self.stage:
            print(file=self.stream, flush=True)
        self.stage = ""


class LetterFolder:
    """A new (or empty) folder of letters, one file each, and their index.

    Each letter goes to ``<login>.txt`` (readable by its owner only) as soon
    as it is given, with a line in :data:`INDEX_FILE`: establishment,
    responsable's id and name, login, account id, file name.
    """

    def __init__(self, folder: Path) -> None:
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise JobError("folder_not_empty", EXIT_USAGE, path=str(folder))
        self.folder = folder
        self.count = 0
        self._index: IO[str] | None = None
        self._writer: Any = None

    def __enter__(self) -> LetterFolder:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._index = (self.folder / INDEX_FILE).open("x", encoding="utf-8", newline="")
        self._writer = csv.writer(self._index)
        self._writer.writerow(["uai", "responsable_id", "responsable_nom", "identifiant",
                               "compte_id", "fichier"])
        return self

    def __exit__(self, *exc: object) -> None:
        if self._index is not None:
            self._index.close()

    @property
    def index(self) -> Path:
        """The index file."""
        return self.folder / INDEX_FILE

    def write(self, letter: NotificationLetter, responsable_id: str) -> Path:
        """Write *letter* (for the responsable of that id) and its index line."""
        path = self.folder / f"{letter.login}.txt"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(messages.render_letter(letter))
        assert self._writer is not None and self._index is not None
        self._writer.writerow([letter.establishment.uai, responsable_id, letter.display_name,
                               letter.login, letter.account_id, path.name])
        self._index.flush()
        self.count += 1
        return path


# -- the preview ---------------------------------------------------------------------------


def _names(children: Iterable[Any]) -> str:
    return ", ".join(f"{c.first_name} {c.last_name}" for c in children)


def format_report(service: MergeService, report: SyncReport, establishment: Establishment,
                  shown: int = SHOWN) -> list[str]:
    """The report as a table, in the language of the run: counts, then what changes.

    A section shows its first *shown* lines (accounts named by their login)
    and says how many more there are.
    """
    def login(account_id: str) -> str:
        try:
            return service.get_account(account_id).login
        except AccountNotFound:
            return account_id

    when = "preview" if report.dry_run else "applied"
    lines = [_(f"sync.title.{when}", uai=establishment.uai, name=establishment.name,
               mode=_(f"sync.mode.{report.mode.value}"))]
    counts = {"entries": report.entries, **report.counts()}
    labels = {name: _(f"sync.count.{name}") for name in counts}
    width = max(len(label) for label in labels.values())
    lines += [f"  {labels[name]:<{width}}  {count:>7}" for name, count in counts.items()]
    sections: list[tuple[str, list[str]]] = [
        ("issued", [f"{i.external_id}  {i.display_name}  ({_names(i.children)})"
                    + (f"  → {i.letter.login}" if i.letter is not None else "")
                    for i in report.issued[:shown]]),
        ("attached", [f"{c.child.first_name} {c.child.last_name} ({c.child.id})  → "
                      f"{login(c.account_id)}" + (f" ({c.external_id})" if c.external_id else "")
                      for c in report.attached[:shown]]),
        ("detached", [f"{c.child.first_name} {c.child.last_name} ({c.child.id})  ← "
                      f"{login(c.account_id)}" + (f" ({c.external_id})" if c.external_id else "")
                      for c in report.detached[:shown]]),
        ("closed", [f"{login(a.account_id)}  ({a.display_name})" for a in report.closed[:shown]]),
        ("reopened", [f"{login(a.account_id)}  ({a.display_name})"
                      for a in report.reopened[:shown]]),
        ("renamed", [f"{n.old}  → {n.new}  ({login(n.account_id)})"
                     for n in report.renamed[:shown]]),
        ("adopted", [f"{ext}  → {login(account_id)}" for ext, account_id in
                     report.adopted[:shown]]),
    ]
    for name, items in sections:
        if not items:
            continue
        lines += ["", _(f"sync.section.{when}.{name}")]
        lines += [f"  {item}" for item in items]
        more = len(getattr(report, name)) - len(items)
        if more > 0:
            lines.append("  " + _("sync.more", count=more))
    return lines


def problem_lines(error: InvalidRegister, shown: int | None = None) -> list[str]:
    """Every problem of a refused register, one line each, in the language of the run."""
    def line(problem: RegisterProblem) -> str:
        fields = dict(problem.fields)
        key = f"register.problem.{problem.kind}"
        text = _(key, **fields) if messages.has_message(key) else problem.message
        if problem.kind == "bad_value" and "detail" in fields:
            text = _("register.problem.detail", message=text, detail=fields["detail"])
        if problem.line is not None:
            return _("register.problem.at_line", line=problem.line,
                     id=problem.external_id or "-", message=text)
        return _("register.problem.at_entry", id=problem.external_id or "-", message=text)

    problems = error.problems if shown is None else error.problems[:shown]
    out = [line(p) for p in problems]
    if shown is not None and len(error.problems) > shown:
        out.append(_("sync.more", count=len(error.problems) - shown))
    return out


# -- sync -----------------------------------------------------------------------------------


def open_register(path: Path, uai: str, *, kind: str | None = None,
                  eleves: str | os.PathLike[str] | None = None,
                  everyone: bool = False) -> RegisterFile:
    """The register of establishment *uai* in *path*: SIECLE's XML or a CSV.

    *kind* is ``"siecle"`` or ``"csv"`` (None: ``.xml`` files are SIECLE's).
    For SIECLE, *eleves* is the pupils' file and *everyone* adds the
    responsables who are not legal ones; a file of another establishment
    is ``other_establishment``.
    """
    if (kind or ("siecle" if path.suffix.lower() == ".xml" else "csv")) == "siecle":
        register = read_siecle_responsables(
            path, eleves=eleves, levels=(0, 1, 2) if everyone else LEGAL_RESPONSABLES)
        named = register.establishment_uai
        if named is not None and named != uai:
            raise JobError("other_establishment", file=path.name, named=named, uai=uai)
        return register
    return read_register_csv(path, uai=uai)


def sync_file(
    service: MergeService, establishment: Establishment, register: Iterable[RegisterEntry], *,
    folder: Path | None, partial: bool = False, yes: bool = False, dry_run: bool = False,
    workers: int | None = None, confirm: Callable[[], bool] | None = None,
    out: Output | None = None, err: Output | None = None,
) -> SyncReport | None:
    """Preview the sync of *register*, ask, apply it, write the new letters to *folder*.

    The preview (a dry run) is printed as a table on *out*; unless *yes*,
    *confirm* decides (None: nothing is applied).  The register is read
    again for the real run, which may differ from the preview if the
    store changed meanwhile; its own report is printed, and returned.
    Letters to issue need *folder* (new or empty): ``letters_folder``
    otherwise, before anything is applied.  Returns None when nothing was
    applied.  A refused register's problems go to *err*, one line each,
    and its :class:`InvalidRegister` is raised.
    """
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    if folder is not None and folder.exists() and (
            not folder.is_dir() or any(folder.iterdir())):
        raise JobError("folder_not_empty", EXIT_USAGE, path=str(folder))
    stages = _Stages(err)
    try:
        preview = service.sync_register(establishment, register, dry_run=True,
                                        partial=partial, progress=stages)
    except InvalidRegister as error:
        stages.end()
        for line in problem_lines(error):
            print(line, file=err)
        raise
    stages.end()
    for line in format_report(service, preview, establishment):
        print(line, file=out)
    if dry_run:
        return None
    if not preview.changed:
        print(_("sync.nothing"), file=out)
        return None
    if preview.issued and folder is None:
        raise JobError("letters_folder", EXIT_USAGE, count=len(preview.issued))
    if not yes and (confirm is None or not confirm()):
        print(_("sync.cancelled"), file=out)
        return None
    letters = LetterFolder(folder) if folder is not None else None
    opened = False

    def write(issued: RegisterLetter) -> None:
        nonlocal opened
        if issued.letter is None:
            return
        if letters is None:  # a letter the preview did not foresee: never lose it
            print(messages.render_letter(issued.letter), file=out)
            return
        if not opened:
            letters.__enter__()
            opened = True
        letters.write(issued.letter, issued.external_id)

    try:
        report = service.sync_register(establishment, register, partial=partial,
                                       workers=workers, progress=stages, on_letter=write)
    finally:
        if opened and letters is not None:
            letters.__exit__(None, None, None)
    stages.end()
    print(file=out)
    for line in format_report(service, report, establishment):
        print(line, file=out)
    if letters is not None and opened:
        print(_("cli.batch.done", count=letters.count, folder=letters.folder,
                index=letters.index), file=out)
    return report


def ask(question: str, stdin: IO[str] | None = None, out: Output | None = None) -> bool:
    """Ask *question* on *out*; True if the answer read from *stdin* is yes (``o``, ``oui``...)."""
    stream = stdin if stdin is not None else sys.stdin
    target = out if out is not None else sys.stdout
    print(question, end="", file=target, flush=True)
    answer = stream.readline().strip().casefold()
    return answer in {a.strip() for a in _("sync.yes_answers").casefold().split(",")}


# -- issue-batch ---------------------------------------------------------------------------------


def issue_batch(
    service: MergeService,
    csv_path: Path,
    folder: Path,
    *,
    encoding: str | None = "utf-8-sig",
    workers: int | None = None,
    out: Output | None = None,
    err: Output | None = None,
    add_establishment: str | None = None,
) -> int:
    """Issue the letters of a school's CSV into *folder*, as ``issue-batch`` does.

    The establishments named in the CSV must be in the service's store.
    Every row is checked first; the families without a bad row are issued
    (hashing on *workers* processes), each letter written to
    ``folder/<login>.txt`` with an index ``folder/courriers.csv``.  On a
    store with the ``register`` tier the families are a partial register
    of their establishment (:meth:`~account_merge.MergeService.sync_register`
    with ``partial=True``, keyed by ``responsable_id``): a responsable
    issued a letter by an earlier run gets no second one, only the
    children added since.  Returns 0, or raises :class:`JobError`
    (``folder_not_empty``, ``invalid_csv``, ``bad_rows`` after issuing the
    good families).  *add_establishment* tells how to add an
    establishment the CSV names but the store lacks.
    """
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    letters = LetterFolder(folder)
    hint = add_establishment if add_establishment is not None else _("cli.add_establishment")

    def check(uai: str) -> str | None:
        if service.find_establishment(uai) is not None:
            return None
        fields = {"uai": uai, "hint": hint}
        return f"{error_text('unknown_establishment', fields)} (unknown_establishment)"

    try:
        batch = read_school_csv(csv_path, encoding, check)
    except InvalidRegister as error:
        problem = error.problems[0]
        raise JobError("invalid_csv", detail=problem.message) from None
    for line, problem_text in sorted(batch.errors):
        print(_("cli.batch.line", line=line, message=problem_text), file=err)
    for family in batch.refused:
        lines = ", ".join(str(n) for n in sorted({family.first_line, *family.bad_lines,
                                                   *family.child_lines.values()}))
        print(_("cli.batch.family_refused", id=family.responsable_id, uai=family.uai,
                lines=lines), file=err)
    good = batch.good
    by_uai: dict[str, list[SchoolFamily]] = {}
    for family in good:
        by_uai.setdefault(family.uai, []).append(family)
    progress = ProgressBar(len(good), err)
    progress.update(0)
    with letters:
        for uai, families in by_uai.items():
            found = service.find_establishment(uai)
            if found is None:
                raise JobError("unknown_establishment", uai=uai, hint=hint)
            _issue_families(service, found, families, letters, workers,
                            progress.after(letters.count))
    if letters.count != len(good):  # families known from earlier runs: no letter
        progress.total = letters.count
        progress.update(letters.count)
    print(_("cli.batch.done", count=letters.count, folder=folder, index=letters.index),
          file=out)
    if batch.errors:
        raise JobError("bad_rows", rows=len({line for line, _problem in batch.errors}),
                       refused=len(batch.refused), issued=letters.count)
    return 0


def _issue_families(service: MergeService, establishment: Establishment,
                    families: list[SchoolFamily], letters: LetterFolder, workers: int | None,
                    progress: Callable[[int], None]) -> None:
    """The letters of *families*: a partial sync where the store can, else one each."""
    def entries() -> Iterator[RegisterEntry]:
        for family in families:
            yield from family.entries()

    def write(issued: RegisterLetter) -> None:
        assert issued.letter is not None
        letters.write(issued.letter, issued.external_id)

    def told(stage: str, done: int, total: int | None) -> None:
        if stage == "letters":
            progress(done)

    try:
        service.sync_register(establishment, entries(), partial=True, workers=workers,
                              progress=told, on_letter=write)
        return
    except NotSupported:
        pass
    issued = service.issue_accounts(establishment, ((f.name, f.children) for f in families),
                                    workers=workers, progress=progress)
    for family, letter in zip(families, issued, strict=True):
        letters.write(letter, family.responsable_id)
