"""The ``[a2a]`` section: decoded from TOML, range problems named by key, the SDK's absence
reported by ``flockrt check``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from flockrt import assembly
from flockrt.config import A2aConfig, A2aRemote, ConfigError, FlockConfig, load_config


def test_the_section_and_its_remotes_decode_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "flock.toml"
    path.write_text(
        "[a2a]\ndefault_skill = 'text-analysis'\nrefresh_interval = 5.0\n"
        "[[a2a.remote]]\nurl = 'http://10.0.0.7:9999'\ntoken = 't'\n"
        "[[a2a.remote]]\nurl = 'https://agents.example/a'\nid = 'writer'\ntimeout = 3.5\n"
    )
    config = load_config(path, env={})
    assert config.a2a == A2aConfig(
        default_skill="text-analysis",
        refresh_interval=5.0,
        remote=[
            A2aRemote(url="http://10.0.0.7:9999", token="t"),
            A2aRemote(url="https://agents.example/a", id="writer", timeout=3.5),
        ],
    )


def test_problems_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "flock.toml"
    path.write_text(
        "[a2a]\ndefault_skill = 'a'\ndefault_task_type = 'b'\nmax_tasks = 0\n"
        "[[a2a.remote]]\nurl = 'ftp://x'\n[[a2a.remote]]\nurl = 'http://x'\nid = 'a.b'\n"
    )
    with pytest.raises(ConfigError) as refused:
        load_config(path, env={})
    message = str(refused.value)
    assert "a2a.max_tasks: expected > 0" in message
    assert "a2a.default_skill / a2a.default_task_type: set at most one" in message
    assert "a2a.remote[0]: expected an http(s):// url" in message
    assert "a2a.remote[1].id: expected letters, digits" in message
    path.write_text("[a2a]\nremotes = []\n")
    with pytest.raises(ConfigError, match=r"a2a.remotes: unknown key"):
        load_config(path, env={})


def test_check_says_how_to_install_the_sdk_when_it_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "a2a" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"pip install 'flockrt\[a2a\]'"):
        assembly.check(FlockConfig(a2a=A2aConfig()))
    assembly.check(FlockConfig())  # no [a2a]: nothing to install
