"""One message's failure stays that message's: the per-message guard of ingest.

Everything done to one message of a batch (envelope checks, the card screen, mapping,
schema, identity, routing) runs inside `isolate`: an exception nobody anticipated rejects
that message alone, with the stable code `internal_error`, and is logged with its stack
trace; the other messages of the request are processed and stored as if it had not been
there. A bug triggered by one odd event can then never lose its neighbours, nor turn a
client's batch into a 500.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from router.pipeline.guard import Rejection

log = logging.getLogger("router.ingest")
T = TypeVar("T")

INTERNAL_ERROR = "internal_error"


def isolate(work: Callable[..., T], *args: Any, where: str) -> T | Rejection:
    """`work(*args)`, or a Rejection(internal_error) when it raises.

    `where` names the message for the log ("message 3 of /v1/batch from segment"): the
    message itself is not logged, it may carry personal data."""
    try:
        return work(*args)
    except Exception as exc:
        log.exception("unexpected %s on %s; that message is rejected as internal_error",
                      type(exc).__name__, where)
        return Rejection(INTERNAL_ERROR, "an unexpected error rejected this event; the "
                         "server log has the details")
