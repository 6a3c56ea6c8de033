"""The README's embedding example runs as written, and every sample output of the README and
docs/getting-started.md is what its command prints (times, ports and ids aside)."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

from flockrt.config import ENV_OVERRIDES

ROOT = Path(__file__).resolve().parent.parent


def test_readme_python_example_runs() -> None:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "README.md has no python example"
    for block in blocks:
        result = subprocess.run(
            [sys.executable, "-c", block], capture_output=True, text=True, timeout=30, cwd=ROOT
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "3"


def test_readme_shows_the_two_setup_commands() -> None:
    text = (ROOT / "README.md").read_text()
    assert "pip install -e . && flockrt run configs/flock.toml" in text
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = "pip install -e '.[dev]' && pytest"
    assert test_command in text
    assert "python -m pip install -e '.[dev]' && python -m pytest" in ci


# ---------------------------------------------------------------------- sample outputs

SAMPLE = re.compile(r"^```sh\n(?P<command>[^\n]+)\n```\n\n+```text\n(?P<output>.*?)^```$", re.M | re.S)
"""A one-line shell command, then (after blank lines only) the text block it prints."""
STOP = re.compile(r"^```text\n(?P<output>[^`]*stopping: draining.*?)^```$", re.M | re.S)
"""The log lines of a flock stopping: the end of ``flockrt run``'s sample."""

PLACEHOLDERS = [
    (r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}", "<time>"),
    (r"127\.0\.0\.1:\d+", "127.0.0.1:<port>"),
    (r"/tmp/flockrt-nats-\w+", "<store dir>"),
    (r"pid \d+", "pid <pid>"),
    (r'"taskId": "[0-9a-f]+"', '"taskId": "<id>"'),
    (r'"durationMs": [0-9.e-]+', '"durationMs": <ms>'),
    (r"\(\d+ messages handled\)", "(<n> messages handled)"),
]
"""What differs from run to run: the shape around it must not."""


class Sample(NamedTuple):
    where: str
    command: str
    output: str


def shape(text: str) -> list[str]:
    for pattern, placeholder in PLACEHOLDERS:
        text = re.sub(pattern, placeholder, text)
    return text.rstrip("\n").splitlines()


def samples() -> list[Sample]:
    found = []
    for name in ("README.md", "docs/getting-started.md"):
        text = (ROOT / name).read_text()
        for match in SAMPLE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append(Sample(f"{name}:{line}", match["command"], match["output"]))
    return found


def argv_of(command: str) -> list[str]:
    argv = shlex.split(command)
    if argv[0] == "flockrt":
        return [sys.executable, "-m", "flockrt", *argv[1:]]
    assert argv[0] == "python", command
    return [sys.executable, *argv[1:]]


def test_the_samples_are_found() -> None:
    commands = [sample.command.split()[:2] for sample in samples()]
    assert ["flockrt", "run"] in commands and ["flockrt", "agents"] in commands
    assert ["python", "examples/coordination.py"] in commands
    assert len(commands) >= 8
    assert STOP.search((ROOT / "docs" / "getting-started.md").read_text())


async def test_every_sample_output_is_what_the_command_prints() -> None:
    """Each command of README.md and docs/getting-started.md that shows its output, run as
    written against the shipped flock (started as the guide starts it, on free ports)."""
    found = samples()
    (run,) = [sample for sample in found if sample.command.startswith("flockrt run ")]
    stop = STOP.search((ROOT / "docs" / "getting-started.md").read_text())
    assert stop is not None
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    drop = {*ENV_OVERRIDES, "MCP_AUTH_TOKENS", "FLOCKRT_TOKEN", "FLOCKRT_CONFIG"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env |= {"MCP_PORT": str(port), "NATS_PORT": "0"}  # what the guide's commands see too
    proc = await asyncio.create_subprocess_exec(
        *argv_of(run.command), cwd=ROOT, env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stderr is not None
        expected = shape(run.output)
        lines = [(await asyncio.wait_for(proc.stderr.readline(), 30)).decode() for _ in expected]
        assert shape("".join(lines)) == expected, f"{run.where}: flockrt run logs something else"
        for sample in found:
            if sample is run:
                continue
            done = await asyncio.create_subprocess_exec(
                *argv_of(sample.command),
                cwd=ROOT,
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(done.communicate(), 60)
            assert done.returncode == 0, f"{sample.where}: {sample.command}\n{err.decode()}"
            assert shape(out.decode()) == shape(sample.output), f"{sample.where}: {sample.command}"
        proc.send_signal(signal.SIGINT)
        _, rest = await asyncio.wait_for(proc.communicate(), 30)
        assert await proc.wait() == 0
        assert shape(rest.decode()) == shape(stop["output"]), "getting-started.md: the stop's log"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
