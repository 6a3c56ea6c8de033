"""Actor classes that tests name in configs (``class = "tests.cli_actors:CrashSoon"``)."""

from __future__ import annotations

from typing import Any

from flockrt import Actor


class CrashSoon(Actor[Any]):
    """Crashes right after every start, so its supervisor soon gives up."""

    def on_start(self) -> None:
        self.context.send_after(0, "crash")

    def receive(self, message: Any) -> None:
        raise RuntimeError("crashing on purpose")


class NotAnActor:
    pass
