"""Outside A2A agents as agents of the flock: one supervised proxy agent per ``[[a2a.remote]]``.

A :class:`RemoteLink` watches one remote: it reads its Agent Card at start and every
``refresh_interval`` seconds (at once after a request to it failed to get through). While the
card can be read, a :class:`RemoteAgent` runs under the ``a2a-remotes`` supervisor, offering
the card's skills as capabilities (with the skills' descriptions, and their input schemas when
the remote is a flockrt flock, whose card carries them); it is restarted with the new skills
when they change. When the card cannot be read, the proxy is stopped: the agent goes offline
in the whole flock, and requests for its skills fail at once with
:class:`~flockrt.errors.NoCapableAgent`. When the card can be read again, it comes back.

A capability request to the proxy becomes an A2A message: ``metadata.skill`` is the
capability, the parameters travel as a data part (a string, or ``{"text": ...}`` alone, as a
text part). The answer is the finished task's artifacts (one data part: its value; text parts:
their text) or the message the remote answered with. A task the remote ends ``failed``,
``rejected`` or ``canceled`` fails the request with
:class:`~flockrt.errors.OutsideAgentFailed`; one that asks for input does too (a flock
request cannot give any). Progress (the remote's ``working`` status messages, when it
streams) reaches the requester as progress reports.

A request given up before the remote's task ended (its requester cancelled it, its deadline or
the remote's ``timeout`` passed, the proxy stopped), and a task left asking for input, are
cancelled at the remote (A2A ``CancelTask``), in the background: the giving up waits for
nothing. A cancel that fails is logged and counted in :attr:`RemoteLink.cancels_failed`.

A :class:`~flockrt.breaker.CircuitBreaker` guards each remote: requests that cannot get
through (refused, reset, timed out, an HTTP error) raise
:class:`~flockrt.errors.RemoteAgentUnreachable` and count; three in a row open it, and then
requests fail fast with :class:`~flockrt.errors.CircuitOpen` until ``refresh_interval`` has
passed (then one trial request goes through), or until the remote comes back after being
offline. A remote whose card can be read but whose requests fail (a wrong token, a broken
endpoint) stays online behind its open breaker.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import uuid
from typing import Any
from urllib.parse import urlsplit

import httpx
from a2a.client import A2ACardResolver, A2AClientError, AgentCardResolutionError, ClientConfig, ClientFactory
from a2a.types import AgentCard, CancelTaskRequest, Message, Role, SendMessageRequest, Task, TaskState
from google.protobuf.json_format import MessageToDict

from flockrt import metrics
from flockrt.a2a.card import SCHEMAS_EXTENSION
from flockrt.a2a.mapping import SKILL_KEY, artifacts_result, metadata_of, parts_of, result_of, whole
from flockrt.actors.ref import ActorRef
from flockrt.actors.system import ActorSystem
from flockrt.actors.tasks import TaskOwner
from flockrt.agents.agent import Agent
from flockrt.agents.work import ProgressCallback
from flockrt.breaker import CircuitBreaker
from flockrt.config import A2aConfig, A2aRemote
from flockrt.errors import CircuitOpen, OutsideAgentFailed, RemoteAgentUnreachable
from flockrt.supervisor.spec import ChildSpec
from flockrt.supervisor.supervisor import DynamicSupervisor
from flockrt.wire.schema import CapabilitySchema

__all__ = ["RemoteAgent", "RemoteLink", "Remotes", "remote_id"]

log = logging.getLogger("flockrt.a2a")

CONCURRENCY = 16
"""Requests one proxy agent has outstanding at its remote at once (its max_concurrent_tasks)."""
FAILURES_TO_OPEN = 3
"""Requests in a row that cannot get through before a remote's breaker opens."""
_SKILL = re.compile(r"^[A-Za-z0-9_\-:]{1,128}$")
_DONE = {TaskState.TASK_STATE_COMPLETED}
_FAILED = {TaskState.TASK_STATE_FAILED, TaskState.TASK_STATE_REJECTED, TaskState.TASK_STATE_CANCELED}
_STUCK = {TaskState.TASK_STATE_INPUT_REQUIRED, TaskState.TASK_STATE_AUTH_REQUIRED}
_ENDED = _DONE | _FAILED
CANCEL_TIMEOUT = 5.0
"""Seconds a cancel of a remote's task may take (at most the remote's ``timeout``)."""


def remote_id(remote: A2aRemote) -> str:
    """The proxy agent's id: ``id`` if set, else ``a2a-<host>-<port>``."""
    if remote.id:
        return remote.id
    parts = urlsplit(remote.url)
    where = f"{parts.hostname or 'remote'}-{parts.port or (443 if parts.scheme == 'https' else 80)}"
    return "a2a-" + re.sub(r"[^A-Za-z0-9_-]", "-", where)


class RemoteAgent(Agent):
    """The proxy of one outside A2A agent: each skill of its card is a capability.

    Args:
        agent_id: Its flock-wide id.
        link: The remote it forwards to.
        card: The remote's card, as last read.
    """

    def __init__(self, agent_id: str, link: RemoteLink, card: AgentCard) -> None:
        super().__init__(agent_id, name=card.name or agent_id, max_concurrent_tasks=CONCURRENCY)
        self._link = link
        self._schemas = _schemas(card)
        for skill in self._schemas:
            self.add_capability(skill, functools.partial(self._forward, skill))

    def capability_schemas(self) -> dict[str, CapabilitySchema]:
        return self._schemas

    async def _forward(self, skill: str, /, *args: Any, **kwargs: Any) -> Any:
        parameters = kwargs if kwargs or not args else args[0]
        return await self._link.ask(skill, parameters, self.progress_listener)


def _schemas(card: AgentCard) -> dict[str, CapabilitySchema]:
    """The card's skills that can be capabilities, described as its card describes them."""
    inputs: dict[str, Any] = {}
    for extension in card.capabilities.extensions:
        if extension.uri == SCHEMAS_EXTENSION:
            inputs = whole(MessageToDict(extension.params))
    schemas = {}
    for skill in card.skills:
        if not _SKILL.match(skill.id) or "." in skill.id:
            log.warning(
                "remote A2A agent %s: skill id %r cannot be a capability: left out", card.name, skill.id
            )
            continue
        schema = inputs.get(skill.id)
        schemas[skill.id] = CapabilitySchema(
            description=skill.description or None, input_schema=schema if isinstance(schema, dict) else None
        )
    return schemas


class RemoteLink:
    """One ``[[a2a.remote]]``: reads its card, keeps its proxy agent online while it can, and
    sends it the proxy's requests through the a2a-sdk's client.

    Args:
        remote: Its config entry.
        supervisor: The ``a2a-remotes`` supervisor its proxy runs under.
        refresh_interval: Seconds between reads of its card.
    """

    def __init__(self, remote: A2aRemote, supervisor: ActorRef[Any], refresh_interval: float) -> None:
        self.remote = remote
        self.agent_id = remote_id(remote)
        self.url = remote.url.rstrip("/")
        self.refresh_interval = refresh_interval
        self._supervisor = supervisor
        headers = {"Authorization": f"Bearer {remote.token}"} if remote.token else None
        self._http = httpx.AsyncClient(timeout=remote.timeout, headers=headers)
        self.breaker = CircuitBreaker(
            f"remote A2A agent {self.agent_id}",
            failure_threshold=FAILURES_TO_OPEN,
            reset_timeout=refresh_interval,
        )
        self.card: AgentCard | None = None
        self._client: Any = None  # the SDK's Client for the card's interface
        self._proxy: ActorRef[Any] | None = None
        self._skills: tuple[str, ...] | None = None
        self._wake = asyncio.Event()
        self._cancels = TaskOwner(f"remote A2A agent {self.agent_id}", log)
        self.cancels_sent = 0
        """Tasks of the remote's cancelled because their request was given up (see the module)."""
        self.cancels_failed = 0
        """Of those, the cancels that failed (logged)."""
        self.offline_reason: str | None = "not read yet"
        """Why the proxy is offline (None: it is online)."""

    @property
    def online(self) -> bool:
        """Whether the proxy agent runs (the card was read at the last try)."""
        return self._proxy is not None

    def poke(self) -> None:
        """Read the card again now (a request failed to get through)."""
        self._wake.set()

    async def watch(self) -> None:
        """Read the card every ``refresh_interval`` s, or when poked, until cancelled."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.refresh_interval):
                    await self._wake.wait()
            self._wake.clear()
            await self.refresh()

    async def refresh(self) -> None:
        """Read the card; start, restart (new skills) or stop the proxy to match."""
        try:
            card = await A2ACardResolver(self._http, self.url).get_agent_card()
        except AgentCardResolutionError as exc:
            await self._offline(str(exc))
            return
        if self._proxy is None:  # back (or there at last): its past failures say nothing now
            self.breaker.record_success()
        schemas = _schemas(card)
        skills = tuple(sorted(schemas))
        if self._proxy is not None and skills == self._skills:
            self.card = card
            return
        try:
            client = ClientFactory(ClientConfig(httpx_client=self._http, streaming=True)).create(card)
        except ValueError as exc:  # no JSON-RPC interface on the card
            await self._offline(f"its card offers no interface this client speaks ({exc})")
            return
        await self._stop_proxy()
        self.card, self._client, self._skills = card, client, skills
        self._proxy = await DynamicSupervisor.start_child(self._supervisor, self.agent_id, self, card)
        self.offline_reason = None
        log.info(
            "remote A2A agent %s at %s is online as agent %s: skills %s",
            card.name,
            self.url,
            self.agent_id,
            ", ".join(skills) or "none",
        )

    async def _offline(self, reason: str) -> None:
        if self._proxy is not None or self.offline_reason == "not read yet":
            log.warning(
                "remote A2A agent %s at %s: its card cannot be read (%s): offline until it can",
                self.agent_id,
                self.url,
                reason,
            )
        self.offline_reason = reason
        await self._stop_proxy()

    async def _stop_proxy(self) -> None:
        proxy, self._proxy = self._proxy, None
        if proxy is not None and proxy.is_alive:
            with contextlib.suppress(KeyError):  # already gone with its supervisor
                await DynamicSupervisor.terminate_child(self._supervisor, proxy)

    async def close(self) -> None:
        """Stop the proxy, give the cancels of its given-up tasks up to their time, close the
        HTTP client."""
        await self._stop_proxy()
        late = await self._cancels.wait(min(self.remote.timeout, CANCEL_TIMEOUT))
        await self._cancels.cancel(late)
        await self._http.aclose()

    # ------------------------------------------------------------------ requests

    async def ask(self, skill: str, parameters: Any, progress: ProgressCallback | None) -> Any:
        """Send ``parameters`` to the remote's ``skill`` and return its answer (counted in
        ``flockrt_a2a_remote_requests_total`` by outcome).

        Raises:
            CircuitOpen: the breaker is open (the last requests could not get through).
            RemoteAgentUnreachable: this one could not either.
            OutsideAgentFailed: the remote ended the task failed, rejected or canceled, or
                asked for input.
        """
        outcome = "failed"
        try:
            result = await self._ask(skill, parameters, progress)
            outcome = "ok"
            return result
        except CircuitOpen:
            outcome = "circuit_open"
            raise
        except RemoteAgentUnreachable as exc:
            # (_ask raises it `from None` out of the TimeoutError of the remote's timeout: its context)
            outcome = "timeout" if isinstance(exc.__context__, TimeoutError) else "unreachable"
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            metrics.observe_a2a_remote(self.agent_id, outcome)

    async def _ask(self, skill: str, parameters: Any, progress: ProgressCallback | None) -> Any:
        trial = self.breaker.check()
        client = self._client
        if client is None:
            self.breaker.release(trial)
            raise RemoteAgentUnreachable(self.agent_id, self.url, self.offline_reason or "no card read")
        if (
            isinstance(parameters, dict)
            and set(parameters) == {"text"}
            and isinstance(parameters["text"], str)
        ):
            parameters = parameters["text"]  # a text agent's natural input
        message = Message(
            role=Role.ROLE_USER,
            message_id=uuid.uuid4().hex,
            parts=parts_of(parameters if parameters is not None else {}),
            metadata=metadata_of({SKILL_KEY: skill}),
        )
        try:
            async with asyncio.timeout(self.remote.timeout):
                result = await self._exchange(client, message, progress)
        except (A2AClientError, httpx.HTTPError, TimeoutError, OSError) as exc:
            reason = (
                f"timed out after {self.remote.timeout:g} s" if isinstance(exc, TimeoutError) else str(exc)
            )
            if self.breaker.record_failure():
                log.warning(
                    "remote A2A agent %s: breaker open after %d failures", self.agent_id, FAILURES_TO_OPEN
                )
            self.poke()
            raise RemoteAgentUnreachable(self.agent_id, self.url, reason or type(exc).__name__) from None
        except BaseException:
            self.breaker.release(trial)
            raise
        self.breaker.record_success()
        return result

    async def _exchange(self, client: Any, message: Message, progress: ProgressCallback | None) -> Any:
        task: Task | None = None
        remote_task = ""  # its id, once the remote said
        artifacts: list[Any] = []
        state = TaskState.TASK_STATE_UNSPECIFIED
        status_text = ""
        steps = 0
        try:
            async for event in client.send_message(SendMessageRequest(message=message)):
                kind = event.WhichOneof("payload")
                if kind == "message":
                    return result_of(event.message.parts)
                if kind == "task":
                    task = event.task
                    remote_task = task.id
                    state = task.status.state
                    status_text = _text(task.status.message)
                elif kind == "status_update":
                    remote_task = remote_task or event.status_update.task_id
                    state = event.status_update.status.state
                    status_text = _text(event.status_update.status.message)
                    if state == TaskState.TASK_STATE_WORKING and status_text and progress is not None:
                        steps += 1
                        progress(steps, None, status_text)
                elif kind == "artifact_update":
                    artifacts.append(event.artifact_update.artifact)
        except asyncio.CancelledError:  # given up: the remote's task must not run on for nobody
            if remote_task and state not in _ENDED:
                self._cancel_later(client, remote_task, "its request was given up")
            elif not remote_task:
                log.info(
                    "remote A2A agent %s: a request given up before the remote named its task "
                    "(nothing to cancel there)",
                    self.agent_id,
                )
            raise
        if remote_task and state in _STUCK:
            self._cancel_later(client, remote_task, "it asked for input no flock request can give")
        if state in _DONE:
            return artifacts_result(artifacts or (list(task.artifacts) if task is not None else []))
        what = TaskState.Name(state).removeprefix("TASK_STATE_").lower()
        if state in _FAILED or state in _STUCK:
            raise OutsideAgentFailed(
                self.agent_id, f"its task ended {what}" + (f": {status_text}" if status_text else "")
            )
        raise OutsideAgentFailed(self.agent_id, f"its answer ended with the task {what}, not completed")

    def _cancel_later(self, client: Any, remote_task: str, why: str) -> None:
        self.cancels_sent += 1
        self._cancels.spawn(self._cancel(client, remote_task, why), name=f"cancel {remote_task}")

    async def _cancel(self, client: Any, remote_task: str, why: str) -> None:
        """Cancel the remote's task ``remote_task`` (best effort: a failure is logged and counted)."""
        try:
            async with asyncio.timeout(min(self.remote.timeout, CANCEL_TIMEOUT)):
                await client.cancel_task(CancelTaskRequest(id=remote_task))
        except (A2AClientError, httpx.HTTPError, TimeoutError, OSError) as exc:
            self.cancels_failed += 1
            log.warning(
                "remote A2A agent %s: its task %s (%s) could not be cancelled: %s",
                self.agent_id,
                remote_task,
                why,
                str(exc) or type(exc).__name__,
            )
            metrics.observe_a2a_remote_cancel(self.agent_id, ok=False)
            return
        metrics.observe_a2a_remote_cancel(self.agent_id, ok=True)
        log.info("remote A2A agent %s: its task %s cancelled: %s", self.agent_id, remote_task, why)


def _text(message: Message) -> str:
    return "\n".join(part.text for part in message.parts if part.WhichOneof("content") == "text")


class Remotes:
    """The ``[[a2a.remote]]`` agents of a flock: their supervisor and their links.

    Args:
        config: ``[a2a]``.
        system: The actor system the proxies run in.
    """

    def __init__(self, config: A2aConfig, system: ActorSystem) -> None:
        self.config = config
        self.system = system
        self.links: dict[str, RemoteLink] = {}
        self._supervisor: ActorRef[Any] | None = None
        self._watching = TaskOwner("A2A remotes", log)

    async def start(self) -> None:
        """Start the supervisor, read every card once (together), then keep watching them."""
        if not self.config.remote:
            return
        template = ChildSpec(id="a2a-remote", factory=RemoteAgent, restart="permanent", shutdown=5.0)
        supervisor = self._supervisor = await self.system.spawn(
            DynamicSupervisor, template, name="a2a-remotes"
        )
        for remote in self.config.remote:
            link = RemoteLink(remote, supervisor, self.config.refresh_interval)
            self.links[link.agent_id] = link
        await asyncio.gather(*(link.refresh() for link in self.links.values()))
        for link in self.links.values():
            self._watching.spawn(link.watch(), name=f"watch {link.agent_id}")

    async def close(self) -> None:
        """Stop watching, stop the proxies (they go offline) and the supervisor. Idempotent."""
        await self._watching.close()
        for link in self.links.values():
            await link.close()
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None and supervisor.is_alive:
            await supervisor.stop()
