"""The SQLite file's schema: its forward migrations and their versions.

:data:`MIGRATIONS` builds every table and index, one step per schema
version; :func:`migrate` runs the steps a file lacks, and refuses a file
of another application or of a newer account_merge.
"""

from __future__ import annotations

import sqlite3
from typing import Final

from account_merge.exceptions import InvalidInput, StorageError

#: ``PRAGMA application_id`` of an account_merge file ("AMRG").
APPLICATION_ID: Final = 0x414D5247

#: The forward migrations: ``MIGRATIONS[n]`` takes a file from version n to n + 1.
#: Version 0 is an empty file; each step is a sequence of SQL statements run
#: in the same transaction as the change of ``user_version``.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # 0 -> 1: the initial schema.
    (
        """CREATE TABLE establishments (
            uai TEXT PRIMARY KEY,
            name TEXT NOT NULL
        )""",
        """CREATE TABLE accounts (
            id TEXT PRIMARY KEY,
            login TEXT NOT NULL,
            login_key TEXT NOT NULL UNIQUE,
            role TEXT NOT NULL,
            status TEXT NOT NULL,
            display_name TEXT NOT NULL,
            establishment_uai TEXT NOT NULL,
            created_at TEXT NOT NULL,
            email TEXT,
            merged_into TEXT REFERENCES accounts (id)
        )""",
        """CREATE INDEX accounts_by_merged_into ON accounts (merged_into)
            WHERE merged_into IS NOT NULL""",
        """CREATE TABLE credentials (
            account_id TEXT PRIMARY KEY REFERENCES accounts (id),
            password_hash TEXT NOT NULL,
            kind TEXT NOT NULL,
            expires_at TEXT
        )""",
        """CREATE TABLE children (
            id TEXT PRIMARY KEY,
            first_name TEXT NOT NULL,
            last_name TEXT NOT NULL,
            establishment_uai TEXT NOT NULL
        )""",
        # A link keeps the child as the letter that carried it named it;
        # ``seq`` gives the order in which children were linked.
        """CREATE TABLE links (
            seq INTEGER PRIMARY KEY,
            account_id TEXT NOT NULL REFERENCES accounts (id),
            child_id TEXT NOT NULL REFERENCES children (id),
            first_name TEXT NOT NULL,
            last_name TEXT NOT NULL,
            establishment_uai TEXT NOT NULL,
            origin_account_id TEXT NOT NULL,
            origin_establishment_uai TEXT NOT NULL,
            via_merge INTEGER NOT NULL,
            linked_at TEXT NOT NULL,
            UNIQUE (account_id, child_id)
        )""",
        "CREATE INDEX links_by_account ON links (account_id, seq)",
        """CREATE TABLE throttles (
            key TEXT PRIMARY KEY,
            consecutive INTEGER NOT NULL,
            last_failure_at TEXT,
            recent TEXT NOT NULL
        )""",
        """CREATE TABLE receipts (
            principal_id TEXT NOT NULL,
            key TEXT NOT NULL,
            login_key TEXT NOT NULL,
            receipt TEXT NOT NULL,
            PRIMARY KEY (principal_id, key)
        )""",
        """CREATE TABLE outbox (
            position INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            payload TEXT NOT NULL,
            published INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX outbox_unpublished ON outbox (position) WHERE published = 0",
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            action TEXT NOT NULL,
            outcome TEXT NOT NULL,
            actor TEXT,
            account_id TEXT,
            login TEXT,
            detail TEXT
        )""",
        "CREATE INDEX audit_by_account ON audit (account_id, id) WHERE account_id IS NOT NULL",
        "CREATE INDEX audit_by_actor ON audit (actor, id) WHERE actor IS NOT NULL",
    ),
    # 1 -> 2: remember the order in which accounts were absorbed into each
    # account, so that they are listed in that order.
    (
        "ALTER TABLE accounts ADD COLUMN merged_seq INTEGER",
        "UPDATE accounts SET merged_seq = rowid WHERE merged_into IS NOT NULL",
        "DROP INDEX accounts_by_merged_into",
        """CREATE INDEX accounts_by_merged_into ON accounts (merged_into, merged_seq)
            WHERE merged_into IS NOT NULL""",
    ),
    # 2 -> 3: the time of each account's last successful sign-in (NULL: none
    # yet, which is what every account of an older file reads as).
    (
        "ALTER TABLE accounts ADD COLUMN last_signed_in_at TEXT",
    ),
    # 3 -> 4: the way back.  Tier email_index: the key of each account's address
    # on record.  Tier notices: the delivery state of each notice, and the last
    # outbox position turned into notices (0 in an older file: every event of it
    # is looked at once; the notices of old ones are dropped when made).
    (
        """CREATE TABLE email_index (
            account_id TEXT PRIMARY KEY REFERENCES accounts (id),
            key TEXT NOT NULL
        )""",
        "CREATE INDEX email_index_by_key ON email_index (key, account_id)",
        """CREATE TABLE notices (
            id TEXT PRIMARY KEY,
            position INTEGER NOT NULL REFERENCES outbox (position) ON DELETE CASCADE,
            role TEXT NOT NULL,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            updated_at TEXT
        )""",
        "CREATE INDEX notices_pending ON notices (position, id) WHERE status = 'pending'",
        """CREATE TABLE notice_cursor (
            one INTEGER PRIMARY KEY CHECK (one = 1),
            position INTEGER NOT NULL
        )""",
    ),
    # 4 -> 5: the school's register (tier ``register``): its records (the
    # children as JSON, [id, first name, last name, UAI], sorted by id), the
    # accounts it closed, and the links found by the establishment whose
    # letter gave them.
    (
        """CREATE TABLE register (
            establishment_uai TEXT NOT NULL,
            external_id TEXT NOT NULL,
            account_id TEXT NOT NULL,
            display_name TEXT NOT NULL,
            email TEXT,
            children TEXT NOT NULL,
            PRIMARY KEY (establishment_uai, external_id)
        ) WITHOUT ROWID""",
        "CREATE INDEX register_by_account ON register (account_id)",
        """CREATE TABLE closures (
            account_id TEXT PRIMARY KEY,
            establishment_uai TEXT NOT NULL,
            closed_at TEXT NOT NULL
        )""",
        "CREATE INDEX links_by_origin ON links (origin_establishment_uai, child_id)",
    ),
    # 5 -> 6: retention.  The indexes that find what is due without a scan
    # (times compared as julianday(), whatever the offset they were written
    # with), and outbox_head: the last outbox position given, so that an
    # entry the purge deletes never gives its position again.
    (
        """CREATE TABLE outbox_head (
            one INTEGER PRIMARY KEY CHECK (one = 1),
            last_position INTEGER NOT NULL
        )""",
        """INSERT INTO outbox_head (one, last_position)
            SELECT 1, max(position) FROM outbox HAVING max(position) IS NOT NULL""",
        """CREATE INDEX credentials_by_expiry ON credentials (julianday(expires_at), account_id)
            WHERE kind = 'provisional'""",
        """CREATE INDEX credentials_to_erase ON credentials (julianday(expires_at))
            WHERE kind = 'provisional' AND password_hash <> '!erased'""",
        """CREATE INDEX accounts_by_last_sign_in ON accounts (julianday(last_signed_in_at), id)
            WHERE status = 'active'""",
        "CREATE INDEX links_by_child ON links (child_id)",
        "CREATE INDEX audit_by_time ON audit (julianday(at), id)",
        "CREATE INDEX audit_by_login ON audit (lower(login)) WHERE login IS NOT NULL",
        "CREATE INDEX throttles_by_last_failure ON throttles (julianday(last_failure_at))",
        "CREATE INDEX notices_by_position ON notices (position)",
        "CREATE INDEX closures_by_time ON closures (julianday(closed_at), account_id)",
    ),
)

#: The schema version this code reads and writes.
SCHEMA_VERSION: Final = len(MIGRATIONS)

# -- migrations -------------------------------------------------------------------
def _pragma_int(connection: sqlite3.Connection, name: str) -> int:
    row = connection.execute(f"PRAGMA {name}").fetchone()
    return int(row[0])


def refuse_unknown_file(connection: sqlite3.Connection, path: str, *, application_id: int,
                        schema_version: int, foreign: str, schema: str) -> tuple[int, int]:
    """Raise StorageError unless the file is empty or one of ours (*application_id*) at a
    version this code reads; its application id and version.

    *foreign* ends the error for another application's file, *schema* names the
    schema in the error for a newer one.  The store and its attempts journal both
    check their files this way.
    """
    found = _pragma_int(connection, "application_id")
    version = _pragma_int(connection, "user_version")
    if found != application_id:
        has_objects = connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if found != 0 or version != 0 or has_objects:
            raise StorageError(path, foreign)
    if version > schema_version:
        raise StorageError(path, f"has {schema} version {version}, newer than the "
                                 f"{schema_version} this account_merge knows; upgrade "
                                 f"account_merge to open it")
    return found, version


def _refuse_unknown(connection: sqlite3.Connection, path: str) -> None:
    """Raise StorageError unless the file is empty or an account_merge store we can read."""
    refuse_unknown_file(connection, path, application_id=APPLICATION_ID,
                        schema_version=SCHEMA_VERSION, schema="schema",
                        foreign="is an SQLite database of another application, "
                                "not an account_merge store")


def migrate(connection: sqlite3.Connection, *, path: str = "", to: int = SCHEMA_VERSION) -> int:
    """Bring the file behind *connection* to schema version *to*; return its version.

    *connection* is in autocommit mode (``isolation_level=None``) with no
    transaction open.  The steps run in one ``BEGIN IMMEDIATE`` transaction,
    so concurrent openers of a new file wait for each other and a step is
    wholly applied or not at all.  A file of another application, or
    written by a newer account_merge, raises
    :class:`~account_merge.exceptions.StorageError` (naming *path*) and is
    left untouched.  A file already past *to* is left as it is.
    """
    if not 0 <= to <= SCHEMA_VERSION:
        raise InvalidInput("to", f"must be between 0 and {SCHEMA_VERSION}")
    if (_pragma_int(connection, "application_id") == APPLICATION_ID
            and _pragma_int(connection, "user_version") == to):
        return to
    connection.execute("BEGIN IMMEDIATE")
    try:
        _refuse_unknown(connection, path)
        version = _pragma_int(connection, "user_version")
        for step in MIGRATIONS[version:to]:
            for statement in step:
                connection.execute(statement)
        version = max(version, to)
        connection.execute(f"PRAGMA user_version = {version:d}")
        connection.execute(f"PRAGMA application_id = {APPLICATION_ID:d}")
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    return version
