"""Every row a store holds, as text: what the retention contract searches for names.

Each dump reads the tables the database has (not those the store knows),
so that a table added later is read too, and the files beside a SQLite
database (the attempts journal).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlalchemy


def dump_sqlite(path: str | Path) -> str:
    """Every row of every table of the SQLite file at *path*, and of the files beside it
    whose name starts with its name (its attempts journal)."""
    database = Path(path)
    files = [database, *sorted(p for p in database.parent.glob(f"{database.name}?*")
                               if not p.name.endswith(("-wal", "-shm", "-journal")))]
    parts = []
    for file in files:
        connection = sqlite3.connect(file)
        try:
            tables = [row[0] for row in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
            parts += [f"{file.name} {table}: {row!r}" for table in tables
                      for row in connection.execute(f'SELECT * FROM "{table}"')]
        finally:
            connection.close()
    return "\n".join(parts)


def dump_tables(engine: sqlalchemy.Engine, prefix: str) -> str:
    """Every row of every table of *engine*'s database whose name starts with *prefix*."""
    with engine.connect() as conn:
        names = sorted(n for n in sqlalchemy.inspect(conn).get_table_names()
                       if n.startswith(prefix))
        parts = []
        for name in names:
            table = sqlalchemy.Table(name, sqlalchemy.MetaData(), autoload_with=conn)
            parts += [f"{name}: {tuple(row)!r}" for row in conn.execute(sqlalchemy.select(table))]
    return "\n".join(parts)
