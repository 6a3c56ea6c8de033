"""What flockrt asks of a JetStream stream, against what an existing one has: never weaker.

flockrt creates two streams: the durable task work queue (``FLOCK_TASKS``) and the stream under
the directory's key-value bucket (``KV_FLOCK_AGENTS``). Either may already exist, made by an
earlier flockrt process or by an operator, with settings of its own. :func:`reconcile` decides
what to do with one, as a pure function (no I/O), so that every rule is tested on its own:

- replicas: more than ``[nats] replicas`` is an error that names the key (flockrt would shrink
  the stream, losing the copies an operator asked for); fewer are raised to it;
- retention and storage: another retention, or memory storage where flockrt needs a file, is an
  error (the server cannot change either in place, and flockrt's promises depend on both);
- subjects: flockrt's are added to the stream's, none is removed;
- duplicate window: raised to flockrt's when shorter, kept when longer;
- everything else an operator set (limits, discard policy, placement, metadata, ...) is kept.
"""

from __future__ import annotations

import dataclasses

from nats.js.api import StorageType, StreamConfig

from flockrt.errors import JetStreamError

__all__ = ["reconcile"]


def reconcile(existing: StreamConfig, wanted: StreamConfig, *, what: str) -> tuple[StreamConfig | None, str]:
    """The update that brings ``existing`` up to ``wanted`` without weakening it.

    Only the settings ``wanted`` names are compared: ``retention``, ``storage``,
    ``num_replicas`` (each if not None), ``subjects`` (if not None) and ``duplicate_window``
    (if not 0).

    Args:
        existing: The stream's config, as the server reports it.
        wanted: What flockrt would create.
        what: How to name the stream in messages ("stream FLOCK_TASKS").

    Returns:
        The config to update the stream to (None: it is kept as it is), and a description of
        the change or of why it is kept, for the log.

    Raises:
        JetStreamError: the stream is weaker than ``wanted`` in a way flockrt cannot or must
            not fix by itself, or flockrt would have to weaken it; the message says which key
            or server setting to change.
    """
    if wanted.retention is not None and _name(existing.retention) != _name(wanted.retention):
        raise JetStreamError(
            f"{what} has retention {_name(existing.retention)}, flockrt needs {_name(wanted.retention)}: "
            f"the server cannot change it in place; remove the stream (nats stream rm {existing.name}) "
            "so that flockrt creates it, or point flockrt at another NATS account"
        )
    if wanted.storage is StorageType.FILE and _name(existing.storage) != StorageType.FILE.value:
        raise JetStreamError(
            f"{what} keeps its messages in {_name(existing.storage)}, so they would not survive a restart "
            f"of its servers; flockrt needs file storage: remove the stream (nats stream rm {existing.name}) "
            "so that flockrt creates it with file storage"
        )
    have = existing.num_replicas or 1
    want = wanted.num_replicas
    changes: list[str] = []
    update: dict[str, object] = {}
    if want is not None and have > want:
        raise JetStreamError(
            f"{what} has {have} replicas, [nats] replicas = {want} would shrink it: set [nats] "
            f"replicas = {have} (NATS_REPLICAS={have}) to keep it, or shrink the stream first "
            f"(nats stream edit {existing.name} --replicas {want}) if fewer copies are really meant"
        )
    if want is not None and have < want:
        update["num_replicas"] = want
        changes.append(f"replicas {have} -> {want} ([nats] replicas)")
    if wanted.subjects is not None:
        current = list(existing.subjects or [])
        missing = [subject for subject in wanted.subjects if subject not in current]
        if missing:
            update["subjects"] = current + missing
            changes.append(f"subjects {current} + {missing}")
    if wanted.duplicate_window and (existing.duplicate_window or 0) < wanted.duplicate_window:
        update["duplicate_window"] = wanted.duplicate_window
        changes.append(
            f"duplicate window {existing.duplicate_window or 0:g} s -> {wanted.duplicate_window:g} s"
        )
    if not update:
        return None, f"{what} kept as it is ({have} replicas, {_name(existing.storage)} storage)"
    return dataclasses.replace(existing, **update), f"{what} updated: " + ", ".join(changes)  # type: ignore[arg-type]


def _name(value: object) -> str:
    """An enum setting as the server spells it (``workqueue``, ``file``), else as it is."""
    return str(getattr(value, "value", value))
