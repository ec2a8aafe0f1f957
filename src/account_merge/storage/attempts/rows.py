"""How the attempts journal stores counters and audit records in its rows."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

import attrs

from account_merge.domain.audit import AuditAction, AuditRecord
from account_merge.domain.throttle import ThrottleState

_ACTIONS: Final = {action.value: action for action in AuditAction}
_AUDIT_COLUMNS: Final = "seq, main_seq, at, action, outcome, actor, account_id, login, detail"
_SELECT_THROTTLES: Final = ("SELECT key, consecutive, last_failure_at, recent FROM throttles"
                            " WHERE namespace = ? AND key IN ({marks})")


@attrs.frozen
class JournalRecord:
    """An audit record of the journal, with its place: after the database's ``main_seq``."""

    main_seq: int
    seq: int
    record: AuditRecord


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _record(row: Sequence[Any]) -> AuditRecord:
    """The audit record of a row of ``_AUDIT_COLUMNS``."""
    return AuditRecord(at=datetime.fromisoformat(row[2]), action=_ACTIONS[row[3]],
                       outcome=row[4], actor=row[5], account_id=row[6], login=row[7],
                       detail=row[8])


def _throttle(row: Sequence[Any]) -> ThrottleState:
    return ThrottleState(key=row[0], consecutive=row[1],
                         last_failure_at=None if row[2] is None else datetime.fromisoformat(
                             row[2]),
                         recent=tuple(datetime.fromisoformat(t) for t in json.loads(row[3])))
