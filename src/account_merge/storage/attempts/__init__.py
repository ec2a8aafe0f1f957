"""The attempts journal: the failed attempts of a SQLite database, in a file of their own.

Rule 6 of :mod:`account_merge.ports.storage`: a store that runs inside a
transaction of its host (a Django request under ``ATOMIC_REQUESTS``, a
Flask-SQLAlchemy session) must keep the failed-attempt counters and the
audit records of failures even if the host rolls back.  On PostgreSQL the
stores write them on a second connection.  On SQLite a second connection
to the same file cannot help: there is one writer at a time, and the
request's transaction holds the write lock (from its first statement,
under ``"transaction_mode": "IMMEDIATE"``), so the second connection could
only wait for it, in the very request that holds it.

So on SQLite, :class:`~account_merge.contrib.django.storage.DjangoStorage`
and :class:`~account_merge.storage.sqlalchemy.SQLAlchemyStorage` keep them
in the *attempts journal*, a small SQLite file beside the database
(``<database>-attempts.sqlite3`` unless configured otherwise), written by
the store's own connection in transactions of its own:

- the failure counters (``Fetch.count``, ``Fetch.throttles``,
  ``ChangeSet.throttles``: counted, read, locked and written there, the
  clearing after a success included);
- the audit records whose outcome is not ``"success"``.

Everything else (accounts, credentials, links, receipts, events, the
audit records of successes) stays in the database, in the host's
transaction.  The journal holds nothing that an invariant of the accounts
depends on: whatever happens to it, no child is lost and no account is
half-merged.

**When.**  Always on SQLite, for every unit of work of those two stores,
inside a host's transaction or not, in session mode or engine mode: where
the counters live is a property of the database, not of the way a store
reaches it, so two stores of one database (a request and a management
command, a session-mode app and an engine-mode worker) always agree.  An
in-memory database gets an in-memory journal, one per database of the
process.

**Where, and agreeing on it.**  :func:`journal_path` gives the file from a
template (``{database}``: the database file's path; ``{name}``: its file
name).  Every journal records the database it serves; a journal asked to
serve another database that still exists is refused (``storage_error``),
and one whose database was moved follows it.  A journal configured away
from the default place leaves a *signpost* there, a journal file that
only names it: a store that looks for the journal in the default place
while the signpost names another, or that is configured elsewhere while
the default place holds the journal or another signpost, is refused with
an error saying where the attempts are kept.  So two stores of one
database cannot silently keep two sets of counters.

**Transactions and locks.**  Each unit of work of a store has at most one
:class:`JournalTransaction`, begun by the first thing it reads or writes
there: ``BEGIN IMMEDIATE`` in a writing unit of work, so counters read or
counted there are protected from every other writer until the unit of
work ends (rule 2), ``BEGIN`` in a reading one.  A writing unit of work
takes the database's write lock before the journal's (the stores begin
their main transaction first), always in that order, so two writers never
wait for each other in a cycle.  The unit of work's ``commit()`` commits
the journal first, then the database (or releases its savepoint, inside a
host's transaction); a journal that cannot commit rolls the database back
too.  The journal is in WAL mode with ``synchronous = FULL``, created
readable and writable by its owner only (``0600``).

**Upgrading.**  Before the journal, the stores kept their counters in
the database's table of counters.  The first transaction of a store's
namespace in a journal adopts them, once (a mark in the journal says it
did): each counter the database holds and the journal does not is copied
in, so an upgrade lifts no throttling.  The database's failure records
stay where they are and :func:`merge_trails` reads them with the rest.

**Order of the audit trail.**  Each record of the journal remembers where
it falls in the database's trail: after the database's record ``main_seq``
(the last one there when it was written, plus those of its own change set
written before it).  :func:`merge_trails` interleaves both trails by that,
so ``audit_records`` gives them in the order they were written.

**A crash between the two files.**  The journal commits first.  A process
that dies after the journal's commit and before the database's loses the
database's part of that step only, as a rollback of the host would: a
merge that did not happen, with its event and the audit record of its
success, while the journal keeps the attempt given back (the password was
right).  A process that dies before the journal's commit loses both, and
the step never happened; an attempt is counted before its password is
checked, so no answer is given for an attempt the journal does not hold.
The audit record of a failure is written after the failure is known and
before the answer is given: a crash between the two loses that record
only, for an attempt whose answer was never given.

**Modules.**  :mod:`.schema` (the journal's schema, and opening a file
checked to serve its database), :mod:`.journal` (:class:`AttemptsJournal`,
its connections and the adoption of older counters), :mod:`.location`
(where a database's journal is, one journal object per database in a
process), :mod:`.transaction` (:class:`JournalTransaction`, made of
:mod:`.transaction_base`, :mod:`.counters`, :mod:`.failures` and
:mod:`.retention`), :mod:`.rows` (how counters and records are stored)
and :mod:`.trails` (splitting a change set, merging the two trails).
"""

from __future__ import annotations

from account_merge.storage.attempts.journal import DEFAULT_BUSY_TIMEOUT, AttemptsJournal
from account_merge.storage.attempts.location import (
    DEFAULT_TEMPLATE,
    check_template,
    file_journal,
    journal_path,
    memory_journal,
)
from account_merge.storage.attempts.rows import JournalRecord
from account_merge.storage.attempts.schema import APPLICATION_ID, SCHEMA_VERSION
from account_merge.storage.attempts.schema import MIGRATIONS as MIGRATIONS
from account_merge.storage.attempts.trails import Attempts, merge_trails, split_attempts
from account_merge.storage.attempts.transaction import JournalTransaction

__all__ = [
    "APPLICATION_ID",
    "DEFAULT_BUSY_TIMEOUT",
    "DEFAULT_TEMPLATE",
    "SCHEMA_VERSION",
    "Attempts",
    "AttemptsJournal",
    "JournalRecord",
    "JournalTransaction",
    "check_template",
    "file_journal",
    "journal_path",
    "memory_journal",
    "merge_trails",
    "split_attempts",
]
