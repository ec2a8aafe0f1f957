"""The school's register and lists, as files: readers, and the jobs run on them.

Readers (each returns a :class:`RegisterFile`: iterate it for
:class:`~account_merge.domain.register.RegisterEntry` items, as many
times as needed, each time reading the files again, a record at a time):

- :func:`read_register_csv`: a register as CSV (UTF-8 or Windows-1252,
  ``;`` or ``,``);
- :func:`read_siecle_responsables`: SIECLE's ``ResponsablesAvecAdresses.xml``
  with the pupils of ``ElevesSansAdresses.xml``.

>>> from account_merge.registers import read_register_csv
>>> register = read_register_csv("registre.csv", uai="0860001J")   # doctest: +SKIP
>>> report = service.sync_register(college, register, dry_run=True)  # doctest: +SKIP

Jobs, shared by ``account-merge`` and the Django management commands (they
print in the language of :func:`account_merge.messages.get_language`):
:func:`sync_file` (preview, ask, apply, write the letters),
:func:`issue_batch` (the letters of a school's CSV), and what they are
made of (:func:`read_school_csv`, :class:`LetterFolder`,
:class:`ProgressBar`, :func:`format_report`, :class:`JobError`,
:func:`describe`).  See ``docs/register.md``.
"""

from account_merge.registers.errors import (
    EXIT_ERROR,
    EXIT_USAGE,
    JobError,
    describe,
    describe_os_error,
    error_text,
)
from account_merge.registers.files import RegisterFile, detect_encoding
from account_merge.registers.jobs import (
    INDEX_FILE,
    LetterFolder,
    Output,
    ProgressBar,
    ask,
    format_report,
    issue_batch,
    open_register,
    problem_lines,
    sync_file,
)
from account_merge.registers.siecle import LEGAL_RESPONSABLES, read_siecle_responsables
from account_merge.registers.tables import (
    REGISTER_COLUMNS,
    REGISTER_OPTIONAL_COLUMNS,
    SCHOOL_CSV_COLUMNS,
    SchoolBatch,
    SchoolFamily,
    read_register_csv,
    read_school_csv,
)

__all__ = [
    "EXIT_ERROR",
    "EXIT_USAGE",
    "INDEX_FILE",
    "LEGAL_RESPONSABLES",
    "REGISTER_COLUMNS",
    "REGISTER_OPTIONAL_COLUMNS",
    "SCHOOL_CSV_COLUMNS",
    "JobError",
    "LetterFolder",
    "Output",
    "ProgressBar",
    "RegisterFile",
    "SchoolBatch",
    "SchoolFamily",
    "ask",
    "describe",
    "describe_os_error",
    "detect_encoding",
    "error_text",
    "format_report",
    "issue_batch",
    "open_register",
    "problem_lines",
    "read_register_csv",
    "read_school_csv",
    "read_siecle_responsables",
    "sync_file",
]
