"""Assembly: the supervision tree a :class:`~flockrt.config.FlockConfig` describes.

:mod:`flockrt.config` is plain data. This module imports the classes a config names
(``class = "echo"``, ``class = "myagents.summarizer:Summarizer"``), checks each entry against
its class (it is an Actor, it offers the capabilities the entry names, it takes the entry's
options) and turns the ``[[agents]]`` and ``[[supervisors]]`` entries into the root
supervisor's :class:`~flockrt.supervisor.spec.ChildSpec` list.

``flockrt check`` and ``flockrt run`` read a file with :func:`load`, which reports the class
problems together with the range problems of :func:`~flockrt.config.load_config`, in one
:class:`~flockrt.errors.ConfigError`.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flockrt.actors.actor import Actor
from flockrt.agents.agent import Agent
from flockrt.config import AgentConfig, FlockConfig, agent_entries, config_problems, decode_config
from flockrt.errors import ConfigError
from flockrt.supervisor.spec import ChildSpec
from flockrt.supervisor.supervisor import Supervisor

__all__ = ["BUILTIN_CLASSES", "check", "child_specs", "class_problems", "load", "resolve_class"]

BUILTIN_CLASSES = {
    "ai": "flockrt.agents.builtins:AiTaskAgent",
    "claude": "flockrt.agents.claude:ClaudeAgent",
    "echo": "flockrt.agents.builtins:EchoAgent",
    "text": "flockrt.agents.builtins:TextAgent",
}
"""Short names a config may use as ``class``; a class is imported only when a config names it."""


def load(path: str | Path, env: Mapping[str, str] | None = None) -> FlockConfig:
    """Read a config file as ``flockrt check`` and ``flockrt run`` do: the checks of
    :func:`~flockrt.config.load_config`, then those of :func:`class_problems`.

    Args:
        path: The TOML file.
        env: Where to read the environment overrides (default: ``os.environ``).

    Raises:
        ConfigError: anything :func:`~flockrt.config.load_config` refuses, or a class that
            cannot be imported, is no Actor, lacks a capability the entry names or does not
            take the entry's options; every range and class problem in one message.
    """
    config = decode_config(path, env)
    problems = config_problems(config) + class_problems(config)
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems))
    return config


def check(config: FlockConfig, source: str = "config") -> None:
    """Raise what :func:`load` would for a config built in code (``source`` prefixes the
    message); :class:`~flockrt.runtime.Flock` calls it before it starts anything.

    Raises:
        ConfigError: the problems of :func:`class_problems`.
    """
    problems = class_problems(config)
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))


def class_problems(config: FlockConfig) -> list[str]:
    """What is wrong with the classes of the ``[[agents]]`` entries, as
    ``agents[0].options: echo does not take them: ...`` (empty when all is well)."""
    problems = []
    if config.a2a is not None and config.a2a.enabled and importlib.util.find_spec("a2a") is None:
        problems.append("a2a: [a2a] needs the a2a-sdk, which is not installed: pip install 'flockrt[a2a]'")
    for where, agent in agent_entries(config):
        try:
            cls = resolve_class(agent.class_)
        except ConfigError as exc:
            problems.append(f"{where}.class: {exc}")
            continue
        is_agent = issubclass(cls, Agent)
        if agent.capabilities is not None:
            declared = getattr(cls, "_flockrt_capabilities", {}) if is_agent else {}
            unknown = [name for name in agent.capabilities if name not in declared]
            if unknown:
                offered = ", ".join(declared) or "none"
                missing = ", ".join(unknown)
                problems.append(
                    f"{where}.capabilities: {agent.class_} does not offer {missing} (it offers {offered})"
                )
        if is_agent and "." in agent.id:
            problems.append(f"{where}.id: an agent's id is part of NATS subjects: no '.', got {agent.id!r}")
        try:
            inspect.signature(cls).bind(*(("id",) if is_agent else ()), **agent.options)
        except TypeError as exc:
            problems.append(f"{where}.options: {agent.class_} does not take them: {exc}")
    return problems


def child_specs(config: FlockConfig) -> list[ChildSpec]:
    """The root supervisor's children: the ``[[agents]]`` in file order (``id-1``.. when
    count > 1), then one supervisor per ``[[supervisors]]`` entry with its own agents.

    A class with a ``flock_options(config, agent_id, options)`` classmethod is built with
    the keyword arguments it returns (its own section of the file, like ``[claude]``,
    merged with the entry's options), and left out when it returns None (it logs why).

    Raises:
        ConfigError: a class cannot be imported or is no Actor.
    """
    specs = _agent_specs(config, config.agents)
    for group in config.supervisors:
        factory = functools.partial(
            Supervisor,
            _agent_specs(config, group.agents),
            strategy=group.strategy,
            max_restarts=group.max_restarts,
            max_seconds=group.max_seconds,
        )
        specs.append(
            ChildSpec(
                id=group.id, factory=factory, restart=group.restart, shutdown=math.inf, type="supervisor"
            )
        )
    return specs


def _agent_specs(config: FlockConfig, agents: list[AgentConfig]) -> list[ChildSpec]:
    specs = []
    for agent in agents:
        cls = resolve_class(agent.class_)
        options = dict(agent.options)
        flock_options = getattr(cls, "flock_options", None)
        if flock_options is not None:
            configured = flock_options(config, agent.id, options)
            if configured is None:
                continue
            options = configured
        factory: Callable[..., Actor[Any]] = functools.partial(cls, **options) if options else cls
        if agent.capabilities is not None:
            factory = functools.partial(_offering_only, factory, tuple(agent.capabilities))
        ids = [agent.id] if agent.count == 1 else [f"{agent.id}-{i}" for i in range(1, agent.count + 1)]
        if config.runtime.prefix_agent_ids:
            ids = [f"{config.runtime.name}-{i}" for i in ids]
        # An Agent's first argument is its flock-wide id: the child id.
        args = (lambda i: (i,)) if issubclass(cls, Agent) else (lambda i: ())
        specs += [
            ChildSpec(id=i, factory=factory, args=args(i), restart=agent.restart, shutdown=agent.shutdown)
            for i in ids
        ]
    return specs


def _offering_only(factory: Callable[..., Actor[Any]], names: tuple[str, ...], *args: Any) -> Actor[Any]:
    agent = factory(*args)
    if isinstance(agent, Agent):
        agent.offer_only(names)
    return agent


def resolve_class(name: str) -> type[Actor[Any]]:
    """Turn a built-in name or ``package.module:Class`` into an Actor subclass.

    Raises:
        ConfigError: the module cannot be imported, or the name is not an Actor subclass.
    """
    target = BUILTIN_CLASSES.get(name, name)
    module_name, _, attr = target.partition(":")
    if not attr:
        builtins = ", ".join(sorted(BUILTIN_CLASSES))
        raise ConfigError(f"expected a built-in name ({builtins}) or 'package.module:Class', got {name!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r} for {name!r}: {exc}") from None
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Actor)):
        raise ConfigError(f"{target!r} is not an Actor subclass")
    return cls
