"""InMemoryStorage: a store in process memory that behaves like a database.

Units of work are serialised by one lock held from ``__enter__`` to
``__exit__``, so concurrent threads see each other's work only once it is
committed (which also makes every ``Fetch(lock=True)`` hold).  Every write
records how to undo itself; leaving a unit of work without ``commit()``
replays the undo log backwards, so nothing is half-written.  It serves
tests, demos and single-process tools; its contents die with the process.

It is also the plainest reading of the storage contract
(:mod:`account_merge.ports.storage`): each rule there is a few lines here.
"""

from account_merge.storage.memory.store import InMemoryStorage
from account_merge.storage.memory.store import _InMemoryUnitOfWork as _InMemoryUnitOfWork

__all__ = ["InMemoryStorage"]
