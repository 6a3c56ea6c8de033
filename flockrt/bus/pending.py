"""Publishing straight into nats-py's pending buffer: its ``publish`` without the coroutines.

nats-py's ``Client.publish`` checks the subject, formats a ``PUB`` command, appends it to the
client's pending buffer and wakes its flusher task, through three coroutines, whether or not it
has to wait. :func:`append_pub` does the same work in one plain call when nothing has to wait,
which saves about a microsecond per message (a tenth of a task's cost on a worker node), and
leaves every other case (headers, a full buffer, a client not plainly connected, a bad
subject) to nats-py's own ``publish``. It relies on nats-py 2.x's client state
(:data:`PENDING_ATTRIBUTES`): :class:`~flockrt.bus.connection.NatsConnection` checks that a client
has it at every connect, and otherwise publishes the public way only.
"""

from __future__ import annotations

import asyncio
import re
from typing import Final

from nats.aio.client import Client

__all__ = ["PENDING_ATTRIBUTES", "append_pub", "understands"]


_CONNECTED: Final = Client.CONNECTED
_INVALID_SUBJECT = re.compile(r"[ \t\r\n]")
"""What nats-py refuses in a subject it publishes to (CRLF would inject protocol commands)."""
PENDING_ATTRIBUTES: Final = (
    "_status",
    "_pending",
    "_pending_data_size",
    "_max_pending_size",
    "_max_payload",
    "_flush_queue",
    "_flusher_task",
    "stats",
)
"""The nats-py client state :func:`append_pub` uses (nats-py 2.x); a client without all of
them is published to through its public ``publish`` only."""


def understands(nc: Client) -> bool:
    """Whether ``nc`` keeps its pending buffer as :func:`append_pub` knows it: every attribute
    of :data:`PENDING_ATTRIBUTES`, the buffer a list of commands and its size a number."""
    return (
        all(hasattr(nc, name) for name in PENDING_ATTRIBUTES)
        and isinstance(nc._pending, list)
        and isinstance(nc._pending_data_size, int)
        and isinstance(nc.stats, dict)
    )


_HEADS: dict[str, bytes] = {}
"""``PUB <subject> `` of subjects published to lately (each checked once; at most 1,024)."""


def _head(subject: str) -> bytes | None:
    """``PUB <subject> ``, or None for a subject nats-py would refuse."""
    if not subject or _INVALID_SUBJECT.search(subject) is not None:
        return None
    head = b"PUB " + subject.encode() + b" "
    if len(_HEADS) >= 1024:  # reply subjects, each used once: start again with what recurs
        _HEADS.clear()
    _HEADS[subject] = head
    return head


def append_pub(nc: Client, subject: str, reply: str, data: bytes) -> bool:
    """Append a PUB (no headers) to nats-py's pending buffer and kick its flusher, exactly as
    ``Client.publish`` does when it does not have to wait; False, having done nothing, when it
    would have to (the buffer is full, the flusher is not running, the client is not plainly
    connected) or would raise (a bad subject, a payload over ``max_payload``): the caller then
    takes the public way, which does what nats-py does in those cases."""
    size = len(data)
    flusher = nc._flusher_task
    if nc._status != _CONNECTED or flusher is None or flusher.done() or size > nc._max_payload:
        return False
    head = _HEADS.get(subject) or _head(subject)
    if head is None:
        return False
    if not reply:  # (the same bytes as nats-py's: an empty reply between two spaces)
        command = b"%s %d\r\n%s\r\n" % (head, size, data)
    elif _INVALID_SUBJECT.search(reply) is None:
        command = b"%s%s %d\r\n%s\r\n" % (head, reply.encode(), size, data)
    else:
        return False
    pending = nc._pending_data_size + len(command)
    if 0 < nc._max_pending_size < pending:  # nats-py would wait for a flush here
        return False
    nc._pending.append(command)
    nc._pending_data_size = pending
    stats = nc.stats
    stats["out_msgs"] += 1
    stats["out_bytes"] += size
    queue = nc._flush_queue
    if queue is not None and queue.empty():  # wake the flusher (it sets the future when done)
        queue.put_nowait(asyncio.get_running_loop().create_future())
    return True
