"""The journal's transaction for one unit of work, made of its parts."""

from __future__ import annotations

from account_merge.storage.attempts.counters import CounterMethods
from account_merge.storage.attempts.failures import FailureMethods
from account_merge.storage.attempts.retention import RetentionMethods


class JournalTransaction(CounterMethods, FailureMethods, RetentionMethods):
    """One transaction of the journal for one unit of work.

    See :mod:`account_merge.storage.attempts`.

    Begun by its first statement; :meth:`commit` and :meth:`rollback` end
    it, and the next statement begins another.  After a driver error it is
    rolled back at once (releasing the journal's lock) and refuses to
    commit until :meth:`rollback`.
    """
