"""What the Containerfile relies on, the package's metadata, and the event-loop option, checked
without a container engine."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from flockrt.config import ENV_OVERRIDES
from flockrt.errors import FlockError
from flockrt.loop import loop_factory, run

ROOT = Path(__file__).resolve().parent.parent
FLOCKRT = (sys.executable, "-m", "flockrt")


CONTAINERFILE = (ROOT / "Containerfile").read_text()


def test_containerfile_copies_existing_paths_and_runs_the_container_config() -> None:
    copies = [line.split() for line in re.findall(r"^COPY (.+)$", CONTAINERFILE, re.M)]
    assert copies
    for *sources, _ in copies:
        for path in sources:
            assert (ROOT / path).exists(), f"Containerfile copies missing {path}"
    assert ["deploy/container.toml", "/etc/flockrt/flock.toml"] in copies
    assert json.loads(instruction("CMD")) == ["flockrt", "run", "/etc/flockrt/flock.toml"]  # run below
    assert re.search(r"^USER (?!root)", CONTAINERFILE, re.M), "the image must not run as root"
    assert re.search(r"^EXPOSE 4002$", CONTAINERFILE, re.M)
    assert json.loads(instruction("HEALTHCHECK").split(" CMD ")[1]) == ["flockrt", "health"]


def test_dependencies_are_installed_before_the_source_is_copied() -> None:
    """So the dependency layer is reused while only flockrt's source changes."""
    lines = [line for line in CONTAINERFILE.splitlines() if line and not line.startswith("#")]
    requirements = next(i for i, line in enumerate(lines) if "requirements.txt" in line)
    source = lines.index("COPY flockrt ./flockrt")
    assert requirements < source
    copied_before = [line for line in lines[:requirements] if line.startswith("COPY")]
    assert copied_before == ["COPY pyproject.toml ./"]
    assert "RUN pip install --no-deps ." in "\n".join(lines[source:])


def requirements_of_the_image(extras: str) -> list[str]:
    """What the Containerfile's dependency step writes to requirements.txt, run here."""
    match = re.search(r"^RUN python -c '(.+?)' > /tmp/requirements.txt", CONTAINERFILE, re.M)
    assert match is not None
    env = {**os.environ, "EXTRAS": extras}
    done = subprocess.run(
        [sys.executable, "-c", match.group(1)], capture_output=True, text=True, cwd=ROOT, env=env, check=True
    )
    return done.stdout.splitlines()


def test_the_image_installs_the_dependencies_and_the_claude_extra_by_default() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert re.search(r"^ARG EXTRAS=claude$", CONTAINERFILE, re.M)
    assert requirements_of_the_image("claude") == project["dependencies"] + ["anthropic>=0.40"]
    assert requirements_of_the_image("") == project["dependencies"]


def test_anthropic_is_an_extra_and_the_version_has_one_source() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    assert not any(dep.startswith("anthropic") for dep in project["dependencies"])
    assert project["optional-dependencies"]["claude"] == ["anthropic>=0.40"]
    assert "anthropic>=0.40" in project["optional-dependencies"]["dev"]  # the tests run the Claude agent
    assert "version" not in project and project["dynamic"] == ["version"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "flockrt._version.__version__"}
    assert project["urls"] and project["classifiers"]


def test_the_licence_file_is_the_declared_licence() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the full text, not a notice


def instruction(name: str) -> str:
    match = re.search(rf"^{name} (.+)$", CONTAINERFILE, re.M)
    assert match is not None, f"no {name} in the Containerfile"
    return match.group(1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_the_image_command_and_healthcheck_on_the_container_config(tmp_path: Path) -> None:
    """What the container runs, run here: ``flockrt run`` on deploy/container.toml with the
    variables the compose file sets, then the HEALTHCHECK command and an operator command."""
    text = (ROOT / "deploy" / "container.toml").read_text()
    assert "port = 4222" in text and 'host = "0.0.0.0"' in text
    config = tmp_path / "flock.toml"
    # A free NATS port (tests run in parallel); the gateway binds beyond loopback as in a container.
    config.write_text(text.replace("port = 4222", "port = 0", 1))
    port = free_port()
    base = {k: v for k, v in os.environ.items() if k not in ENV_OVERRIDES and k != "MCP_AUTH_TOKENS"}
    env = {**base, "AGENT_ID": "node-7", "MCP_PORT": str(port), "MCP_AUTH_TOKENS": "s3cret"}

    refused = await asyncio.create_subprocess_exec(
        *FLOCKRT, "run", str(config), env={**env, "MCP_AUTH_TOKENS": ""}, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(refused.communicate(), 30)
    assert refused.returncode == 2  # no token: the config is refused before anything starts
    assert "host = '0.0.0.0' is reachable from other machines" in err.decode()

    proc = await asyncio.create_subprocess_exec(
        *FLOCKRT, "run", str(config), env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stderr is not None
        async with asyncio.timeout(30):
            while b"agents under /root" not in (line := await proc.stderr.readline()):
                assert line, "flockrt run ended early"
        healthcheck = json.loads(instruction("HEALTHCHECK").split(" CMD ")[1])
        check = await asyncio.create_subprocess_exec(*FLOCKRT, *healthcheck[1:], env=env)
        assert await asyncio.wait_for(check.wait(), 30) == 0
        agents = await asyncio.create_subprocess_exec(
            *FLOCKRT, "agents", "--token", "s3cret", env=env, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(agents.communicate(), 30)
        assert agents.returncode == 0
        ids = [line.split()[0] for line in out.decode().splitlines()[1:]]
        assert ids == ["node-7-ai", "node-7-echo", "node-7-text-1", "node-7-text-2"]  # prefixed by AGENT_ID
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_compose_runs_nats_and_two_nodes_of_this_image() -> None:
    compose = (ROOT / "deploy" / "compose.yaml").read_text()
    assert "dockerfile: Containerfile" in compose and "context: .." in compose
    assert (ROOT / "deploy" / ".." / "Containerfile").exists()
    assert re.findall(r"^  (node-\d|nats):", compose, re.M) == ["nats", "node-1", "node-2"]
    assert re.findall(r"AGENT_ID: (node-\d)", compose) == ["node-1", "node-2"]
    assert "NATS_URL: nats://nats:4222" in compose
    # Every variable it sets for a node is one the config reads.
    nodes = compose.split("\n  prometheus:")[0]
    for variable in re.findall(r"^\s+([A-Z_]+): ", nodes, re.M):
        assert variable in ENV_OVERRIDES or variable == "MCP_AUTH_TOKENS", variable


async def _loop_name() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_run_on_uvloop_and_default_loop() -> None:
    pytest.importorskip("uvloop")
    assert run(_loop_name(), "uvloop").startswith("uvloop")
    assert run(_loop_name(), "asyncio").startswith("asyncio")


def test_unknown_loop_is_refused() -> None:
    with pytest.raises(ValueError, match="asyncio or uvloop"):
        loop_factory("trio")  # type: ignore[arg-type]
    assert loop_factory("asyncio") is None


def test_missing_uvloop_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "uvloop", None)
    with pytest.raises(FlockError, match="pip install 'flockrt\\[uvloop\\]'"):
        loop_factory("uvloop")
