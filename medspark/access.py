"""The access log: every read of restricted tables by a medspark command or function.

The restricted warehouse is the key to re-identification (original ids, file paths, true
dates, withheld pixels). HIPAA's audit-controls standard (45 CFR 164.312(b)) asks for a record
of who used such data; ``restricted_access_log`` is that record: when, the OS user and host,
the command and the function that read, which restricted tables, how many rows (null for a
lazy read nobody counted), and the purpose given with ``--purpose``. Written with delta-rs
from the driver (milliseconds, no Spark job). A failure to write it is a warning, not a
failed command: the log must not take the warehouse down with it.
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

LOG = logging.getLogger(__name__)

#: What the CLI says of the command being run (see :func:`set_context`).
_CONTEXT: dict[str, str | None] = {"command": "python", "purpose": None}


def set_context(command: str, purpose: str | None) -> None:
    """The command (``medspark <command>``) and ``--purpose`` that later reads are logged
    under; library callers that set nothing are logged as ``python``."""
    _CONTEXT["command"] = command
    _CONTEXT["purpose"] = purpose


def who() -> tuple[str | None, str | None]:
    """The OS user and host of this process (None where the system cannot say)."""
    try:
        user: str | None = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        user = str(os.getuid())
    try:
        host: str | None = socket.gethostname()
    except OSError:
        host = None
    return user, host


def record_access(
    config: Any, function: str, tables: Sequence[str], row_count: int | None = None
) -> None:
    """Append one ``restricted_access_log`` row: ``function`` read ``tables``."""
    from medspark.tables.small import append_rows
    from medspark.tables.writers import ensure_restricted_root

    user, host = who()
    row = {
        "accessed_at": datetime.now(timezone.utc),
        "os_user": user,
        "host": host,
        "command": _CONTEXT["command"] or "python",
        "function": function,
        "tables": sorted(tables),
        "row_count": row_count,
        "purpose": _CONTEXT["purpose"],
    }
    try:
        ensure_restricted_root(config)
        append_rows(config.table_path("restricted_access_log"), "restricted_access_log", [row])
    except Exception as exc:  # noqa: BLE001 - the log must not fail the command
        LOG.warning("could not record the read of %s in the access log: %s", ", ".join(tables), exc)
