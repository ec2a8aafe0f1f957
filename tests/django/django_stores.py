"""Helpers of the Django tests: fresh stores on a database alias, unusable stores."""

from __future__ import annotations

import sqlite3
from typing import Any

from django.db import connections
from django.db.utils import ConnectionDoesNotExist, load_backend

from account_merge.contrib.django import models
from account_merge.contrib.django.storage import DjangoStorage

#: The app's tables, children before parents (so that deleting in order is allowed).
TABLES = [model._meta.db_table for model in (
    models.Notice, models.NoticeCursor, models.EmailIndexEntry,  # the way back's tiers
    models.RegisterEntry, models.RegisterClosure,
    models.OutboxHead,  # tier retention
    models.ChildLink, models.Credential, models.Child, models.Receipt, models.Throttle,
    models.OutboxEvent, models.AuditEntry, models.EstablishmentStaff, models.Establishment,
    models.Account,
)]


def empty_store(alias: str) -> DjangoStorage:
    """A DjangoStorage on *alias* whose tables (and attempts journal, on SQLite) were emptied."""
    connection = connections[alias]
    with connection.cursor() as cursor:
        for table in TABLES:
            cursor.execute(f"DELETE FROM {connection.ops.quote_name(table)}")
    store = DjangoStorage(using=alias)
    store.forget_attempts()
    return store


def unusable_store(alias: str, settings_dict: dict[str, Any]) -> DjangoStorage:
    """A DjangoStorage on a connection, made now for this thread, that cannot be used.

    The connection is not in ``DATABASES`` (Django's test cases allow such
    connections made on the fly).
    """
    connections[alias] = load_backend(settings_dict["ENGINE"]).DatabaseWrapper(
        settings_dict, alias)
    return DjangoStorage(using=alias)


def forget_connection(alias: str) -> None:
    """Close and drop a connection made by :func:`unusable_store`."""
    try:
        connection = connections[alias]
    except ConnectionDoesNotExist:
        return
    connection.close()
    del connections[alias]


def dump_database(alias: str, storage: DjangoStorage) -> str:
    """Every row of every table of the database of *alias*, and of its attempts journal."""
    connection = connections[alias]
    parts = []
    with connection.cursor() as cursor:
        for table in sorted(connection.introspection.table_names(cursor)):
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            parts += [f"{table}: {row!r}" for row in cursor.fetchall()]
    if connection.vendor == "sqlite":
        journal = storage._journal_of(connection)
        raw = sqlite3.connect(journal.path, uri=journal.in_memory)
        try:
            tables = [row[0] for row in raw.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
            parts += [f"journal {table}: {row!r}" for table in tables
                      for row in raw.execute(f'SELECT * FROM "{table}"')]
        finally:
            raw.close()
    return "\n".join(parts)
