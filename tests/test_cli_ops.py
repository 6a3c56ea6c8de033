"""The operator's toolkit against a live flock: --config, --timeout while connecting, progress,
Ctrl-C, a closed pipe, --json; each command a real ``flockrt`` process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from flockrt.cli.output import ProgressLine
from flockrt.config import ENV_OVERRIDES
from flockrt.runtime import Flock

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "cli-s3cret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without the variables that would override a config or name a flock."""
    drop = {*ENV_OVERRIDES, "MCP_AUTH_TOKENS", "FLOCKRT_TOKEN", "FLOCKRT_CONFIG"}
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **extra}


async def flockrt(*argv: str, env: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "flockrt",
        *argv,
        cwd=ROOT,
        env=env if env is not None else clean_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def config_file(tmp_path: Path) -> AsyncIterator[Path]:
    """A flock with a token-protected gateway on a free, non-default port, started from the
    file this yields: what an operator's config says is all the commands are told."""
    port = free_port()
    path = tmp_path / "flock.toml"
    path.write_text(
        f'[runtime]\nname = "ops"\nshutdown_timeout = 5.0\n'
        f'[mcp]\nport = {port}\n[mcp.auth]\ntokens = ["{TOKEN}"]\n'
        '[[agents]]\nid = "reporter"\nclass = "tests.cli_agents:Reporter"\n'
        '[[agents]]\nid = "stuck"\nclass = "tests.cli_agents:Stuck"\n'
        '[[agents]]\nid = "echo"\nclass = "echo"\n'
    )
    async with Flock.from_config(path, env={}):
        yield path


async def test_operator_commands_find_the_gateway_and_token_in_the_config(config_file: Path) -> None:
    status, out, err = await flockrt("agents", "--config", str(config_file))
    assert (status, err) == (0, "")
    assert [line.split()[0] for line in out.splitlines()] == ["AGENT", "echo", "reporter", "stuck"]
    # The variable names the config as well as the flag; --json gives what scripts parse.
    status, out, _ = await flockrt("agents", "--json", env=clean_env(FLOCKRT_CONFIG=str(config_file)))
    assert status == 0
    assert sorted(agent["id"] for agent in json.loads(out)) == ["echo", "reporter", "stuck"]
    status, out, _ = await flockrt("health", "--config", str(config_file), "--json")
    assert status == 0
    assert json.loads(out)["healthy"] is True
    # Without it the default port is tried, where this flock is not.
    status, _, err = await flockrt("agents", "--url", "ws://127.0.0.1:1/mcp", "--timeout", "2")
    assert status == 3


async def test_json_on_the_commands_that_print_data(config_file: Path) -> None:
    where = ("--config", str(config_file))
    status, out, _ = await flockrt("tree", *where, "--json")
    assert status == 0 and json.loads(out)["children"][0]["name"] == "root"
    status, out, _ = await flockrt("send", "echo", "hi", *where, "--json")
    assert status == 0 and json.loads(out) == {"sent": "command", "to": "echo"}
    status, out, _ = await flockrt("submit", "general", '"hi"', *where, "--json")
    assert status == 0 and set(json.loads(out)) == {"taskId"}
    status, out, _ = await flockrt("check", str(config_file), "--json", env=clean_env())
    assert status == 0
    assert [child["id"] for child in json.loads(out)["children"]] == ["reporter", "stuck", "echo"]


async def test_progress_of_request_and_submit_wait_goes_to_stderr(config_file: Path) -> None:
    where = ("--config", str(config_file))
    status, out, err = await flockrt("request", "reporting", *where)
    assert status == 0 and json.loads(out) == "finished"
    lines = err.splitlines()
    assert lines[0] == "flockrt request: started"
    assert "flockrt request: half way" in lines and "flockrt request: all there" in lines
    assert lines[-1] == "flockrt request: done"
    status, out, err = await flockrt("submit", "general", '"hi"', "--wait", *where)
    assert status == 0 and json.loads(out)["result"] == "hi"
    assert err.splitlines()[0] == "flockrt submit: started" and err.splitlines()[-1] == "flockrt submit: done"
    status, out, err = await flockrt("request", "reporting", *where, "--quiet")
    assert (status, err) == (0, "")


def test_progress_on_a_terminal_is_one_line_redrawn_and_erased() -> None:
    class Terminal:
        def __init__(self) -> None:
            self.written: list[str] = []

        def isatty(self) -> bool:
            return True

        def write(self, text: str) -> None:
            self.written.append(text)

        def flush(self) -> None:
            pass

    terminal = Terminal()
    progress = ProgressLine("submit", terminal)  # type: ignore[arg-type]
    progress(0, None, "started")
    progress(1, None, None)
    progress.close()
    erase = "\r\033[K"
    assert terminal.written == [f"{erase}| flockrt submit: started", f"{erase}/ flockrt submit: 1", erase]
    assert "\n" not in "".join(terminal.written)


async def test_timeout_bounds_connecting_to_a_gateway_that_never_answers() -> None:
    # Accepted by the kernel, never answered: the WebSocket upgrade waits until the timeout.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"ws://127.0.0.1:{silent.getsockname()[1]}/mcp"
        started = time.monotonic()
        status, _, err = await flockrt("agents", "--url", url, "--timeout", "1")
        elapsed = time.monotonic() - started
    assert status == 3, err
    assert f"MCP gateway at {url} is unavailable" in err
    assert elapsed < 4.5, f"took {elapsed:.1f} s with --timeout 1 (connecting used to take 5 s)"


async def test_ctrl_c_while_waiting_exits_130_with_one_line(config_file: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "flockrt",
        "submit",
        "stuck",
        "--wait",
        "--config",
        str(config_file),
        cwd=ROOT,
        env=clean_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        # The first progress notification: the task is submitted and the command waits.
        line = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert line.decode().strip() == "flockrt submit: started"
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 130
    rest = [line for line in err.decode().splitlines() if not line.startswith("flockrt submit: waiting")]
    assert rest == ["flockrt submit: interrupted"]
    assert out == b""


async def test_a_closed_pipe_ends_the_command_quietly(config_file: Path) -> None:
    """``flockrt agents | head -0``: the reader is gone before anything is written."""
    buffered = {k: v for k, v in clean_env().items() if k != "PYTHONUNBUFFERED"}
    unbuffered = {**buffered, "PYTHONUNBUFFERED": "1"}  # as in the container image
    agents = ["agents", "--config", str(config_file)]
    for argv, env in ((agents, buffered), (agents, unbuffered), (["--help"], buffered)):
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "flockrt",
                *argv,
                cwd=ROOT,
                env=env,
                stdout=write_end,
                stderr=asyncio.subprocess.PIPE,
            )
        finally:
            os.close(write_end)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 141, (argv, err.decode())
        assert err.decode() == "", argv  # no "[Errno 32] Broken pipe", no "Exception ignored"
