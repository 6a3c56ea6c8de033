"""The confirmed hand-off: capacity-aware core mode on a NATS cluster.

On a cluster a core lane (:class:`~flockrt.bus.lanes.CoreLane`) keeps one unbounded queue
subscription on ``tasks.<type>`` for good, because withdrawing queue interest there loses
routed messages at the server (docs/flock.md, "Core mode on a NATS cluster"). So each process
gets an equal share of the tasks, whatever its slots, and what it cannot start waits in it.
:class:`HandOff` moves those waiting tasks to processes with a free slot, and never touches the
interest on ``tasks.<type>``:

- Every lane listens on its own inbox, ``flockrt.intake.<type>.offer.<token>``, for as long as
  it takes tasks (never withdrawn in between: no interest race), and on
  ``flockrt.intake.<type>.room`` (no queue group) for room announcements.
- A process that holds tasks waiting for a slot offers them, highest priority and oldest
  first, by request/reply on the inbox of a process that said it has room, the task's own
  message as payload (its headers kept, its reply subject in ``Flockrt-Reply``). The receiver
  checks that it has room (a free slot, nothing waiting, not stopping); if so it starts the
  task at once, as if it had come on ``tasks.<type>`` (the result goes to ``task.result`` and
  the original reply subject), and answers ``taken``, else ``full``. The sender forgets the
  task only on ``taken``; on ``full``, no responders, a timeout or a lost connection it keeps
  it, in its place. A task taken from an offer is started, never held, so it is never offered
  again: no hand-off loops. It may run twice only if a ``taken`` answer is lost or late (past
  :data:`OFFER_TIMEOUT`: a partition), and is never lost by the hand-off.
- Who has room: a process whose last slot frees up while somebody holds tasks (it heard an
  offer or a question within :data:`WANTED_FOR` seconds) announces its room on the room
  subject, with its inbox. A holder that knows of no room asks there (a :class:`Room` with
  room 0) every :data:`RETRY` seconds while it holds, and processes with room answer with an
  announcement, so nothing depends on a single message. A ``taken`` answer carries the room
  left, so a holder keeps offering while there is room and stops when there is none.

A lane's hand-off exists only on a cluster; on a single server credit and the keeper make core
mode capacity-aware, and nothing here runs. It costs nothing per task while no task waits for
a slot: the lane's finished-task path asks one attribute and two counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import TYPE_CHECKING

import msgspec

from flockrt.actors.tasks import TaskOwner
from flockrt.bus.connection import Message, Subscription
from flockrt.errors import BusTimeout, BusUnavailable, NoResponders
from flockrt.wire.keeper import REPLY_HEADER, OfferAnswer, Room, offer_subject, room_subject
from flockrt.wire.schema import TaskMessage

if TYPE_CHECKING:
    from flockrt.bus.lanes import CoreLane, Held

__all__ = ["OFFER_TIMEOUT", "RETRY", "WANTED_FOR", "HandOff"]

log = logging.getLogger("flockrt.intake")

OFFER_TIMEOUT = 2.0
"""Seconds a holder waits for the answer to an offer before it keeps the task (a receiver
answers at once: only a partition or a stopping receiver makes it wait this long)."""
RETRY = 0.2
"""Seconds between a holder's questions for room, while it holds tasks and knows of none."""
WANTED_FOR = 1.0
"""Seconds a process announces freed slots after it last heard that somebody holds tasks."""
MAX_OFFERS = 64
"""Offers a lane has in flight at once (tasks out of its queue while their answer comes)."""

_ROOMS = msgspec.json.Encoder()
_ROOM = msgspec.json.Decoder(Room)
_ANSWER = msgspec.json.Decoder(OfferAnswer)


class _Peer:
    """Another process of the type, as announcements and answers told of it."""

    __slots__ = ("inbox", "inflight", "node", "room")

    def __init__(self, node: str, inbox: str, room: int) -> None:
        self.node = node
        self.inbox = inbox
        self.room = room
        """Tasks it could still take, as far as this process knows."""
        self.inflight = 0


class HandOff:
    """The hand-off of one :class:`~flockrt.bus.lanes.CoreLane` on a NATS cluster."""

    def __init__(self, lane: CoreLane) -> None:
        self.lane = lane
        self.bus = lane.bus
        self.node = lane.node
        self.inbox = offer_subject(lane.task_type, os.urandom(8).hex())
        self._inboxes = offer_subject(lane.task_type, "x")[:-1]  # what every inbox of the type starts with
        self.subject = room_subject(lane.task_type)
        self.peers: dict[str, _Peer] = {}
        """Other processes of the type, by inbox."""
        self.offering = 0
        """Tasks offered whose answer has not come yet (out of the lane's queue meanwhile)."""
        self._wanted_until = 0.0
        self._asked_at = -RETRY
        self._wake = asyncio.Event()
        self._loop_owner = TaskOwner(f"hand-off of {lane.subject}", log)
        self._offers: set[asyncio.Task[None]] = set()
        self._inbox_sub: Subscription | None = None
        self._room_sub: Subscription | None = None
        self._stopping = False

    async def start(self) -> None:
        self._room_sub = await self.bus.subscribe(self.subject, self._on_room)
        self._inbox_sub = await self.bus.subscribe(self.inbox, self._on_offer)
        self._loop_owner.spawn(self._offer_loop(), name=f"flockrt-handoff-{self.lane.task_type}")
        self._announce()  # a holder may offer at once (others learn of it when they ask)

    # ------------------------------------------------------------------ what the lane tells

    def holding(self) -> None:
        """A task waits for a slot in the lane: offer it (on the loop's next turn)."""
        self._wake.set()

    def finished(self) -> None:
        """A task of the lane finished: a full lane that now has room says so, if somebody
        holds tasks (called for every task: two counters and one attribute, usually)."""
        lane = self.lane
        if lane.running == lane.capacity - 1 and not lane.held and self._wanted_until:
            self._announce_if_wanted()

    def changed(self) -> None:
        """The lane's capacity changed: announce the room it may now have."""
        self._announce()

    # ------------------------------------------------------------------ lifecycle

    async def stop(self) -> None:
        """The lane stops taking tasks (it already has no room): take no more offers, let the
        offers in flight be answered, then offer what waits to processes known to have room.
        What is left is the lane's to hand back."""
        self._stopping = True
        await self._loop_owner.close()
        inbox, self._inbox_sub = self._inbox_sub, None
        if inbox is not None:
            await inbox.drain()  # (offers that arrive meanwhile are answered "full")
        await self._settle()
        self._offer_some()  # to those known to have room; no question, no wait for answers
        await self._settle()
        room, self._room_sub = self._room_sub, None
        if room is not None:
            await room.unsubscribe()

    async def close(self) -> None:
        """Stop at once: offers in flight are cancelled and their tasks kept by the lane."""
        self._stopping = True
        await self._loop_owner.close()
        for offer in list(self._offers):
            offer.cancel()
        await self._settle()
        for subscription in (self._inbox_sub, self._room_sub):
            if subscription is not None:
                await subscription.unsubscribe()
        self._inbox_sub = self._room_sub = None

    async def _settle(self) -> None:
        while self._offers:
            await asyncio.gather(*self._offers, return_exceptions=True)

    # ------------------------------------------------------------------ receiving

    def _on_offer(self, message: Message) -> None:
        """A task offered by a process that holds it: take it if a slot is free now."""
        lane = self.lane
        self._wanted_until = asyncio.get_running_loop().time() + WANTED_FOR
        if not message.reply:
            return
        taken = False
        if lane.room > 0:
            headers = dict(message.headers)
            reply = headers.pop(REPLY_HEADER, "")
            original = Message(lane.subject, message.data, headers, reply)
            task = lane.outlet.decode(original, TaskMessage)
            if task is not None:  # (its holder decoded it: invalid only if tampered with)
                lane.take_handed(task, original)
                taken = True
        answer = OfferAnswer(node=self.node, taken=taken, room=lane.room)
        lane.outlet.send(message.reply, _ROOMS.encode(answer), None)

    def _on_room(self, message: Message) -> None:
        """An announcement of room (remember it, offer), or a holder's question (answer it)."""
        try:
            room = _ROOM.decode(message.data)
        except msgspec.DecodeError:
            room = None
        if room is None or not room.inbox.startswith(self._inboxes):
            self.lane.outlet.reject(message.subject, "not a room announcement of this task type")
            return
        if room.inbox == self.inbox:
            return
        peer = self.peers.get(room.inbox)
        if peer is not None:
            peer.room = room.room
        elif room.room > 0:  # (a holder that asks is remembered once it has room)
            self.peers[room.inbox] = _Peer(room.node, room.inbox, room.room)
        if room.room > 0:
            if self.lane.held:
                self._wake.set()
        else:  # a holder asks: it will offer
            self._wanted_until = asyncio.get_running_loop().time() + WANTED_FOR
            self._announce()

    def _announce_if_wanted(self) -> None:
        if self._wanted_until > asyncio.get_running_loop().time():
            self._announce()

    def _announce(self) -> None:
        if self._stopping or self.lane.room <= 0:
            return
        room = Room(node=self.node, room=self.lane.room, inbox=self.inbox)
        self.lane.outlet.send(self.subject, _ROOMS.encode(room), None)

    def _ask(self) -> None:
        """Ask who has room (a :class:`Room` with room 0), at most once per :data:`RETRY`."""
        now = asyncio.get_running_loop().time()
        if now - self._asked_at >= RETRY:
            self._asked_at = now
            room = Room(node=self.node, room=0, inbox=self.inbox)
            self.lane.outlet.send(self.subject, _ROOMS.encode(room), None)

    # ------------------------------------------------------------------ offering

    async def _offer_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RETRY if self.lane.held else None):
                    await self._wake.wait()
            self._wake.clear()
            if self.lane.held and not self._offer_some():
                self._ask()

    def _offer_some(self) -> bool:
        """Offer waiting tasks to the processes known to have room, as many as they have;
        whether any was offered."""
        lane = self.lane
        offered = False
        for peer in sorted(self.peers.values(), key=lambda p: p.room, reverse=True):
            while peer.room > 0 and lane.held and self.offering < MAX_OFFERS:
                peer.room -= 1
                entry = lane.offer_next()
                self.offering += 1
                offer = asyncio.get_running_loop().create_task(self._offer(peer, entry))
                self._offers.add(offer)
                offer.add_done_callback(self._offers.discard)
                offered = True
        return offered

    async def _offer(self, peer: _Peer, entry: Held) -> None:
        """Offer one task to ``peer``; the lane keeps it unless ``peer`` answers ``taken``."""
        lane = self.lane
        _, _, task, message = entry
        headers = dict(message.headers)
        if message.reply:
            headers[REPLY_HEADER] = message.reply
        taken = False
        peer.inflight += 1
        try:
            answer = await self.bus.request(
                peer.inbox, message.data, timeout=OFFER_TIMEOUT, headers=headers or None
            )
            result = _ANSWER.decode(answer.data)
            taken = result.taken
            peer.room = max(0, result.room - (peer.inflight - 1))
        except NoResponders:  # it stopped
            self.peers.pop(peer.inbox, None)
        except BusTimeout:
            peer.room = 0
            log.warning(
                "%s: no answer from %s within %g s to the offer of task %s; kept here (if %s took "
                "it after all, it runs twice)",
                lane.subject,
                peer.node,
                OFFER_TIMEOUT,
                task.id,
                peer.node,
            )
        except (BusUnavailable, msgspec.DecodeError) as exc:
            peer.room = 0
            log.debug("%s: offer of %s to %s failed: %r", lane.subject, task.id, peer.node, exc)
        finally:
            peer.inflight -= 1
            self.offering -= 1
            if taken:
                lane.stats.handed_off += 1
            else:
                lane.keep(entry)
        if taken and lane.held and not self._stopping:
            self._wake.set()  # it may have more room: offer on
