"""Built-in actors that a config can name by a short name (``class = "echo"``)."""

from __future__ import annotations

from typing import Any

from flockrt.actors.actor import Actor

__all__ = ["Echo"]


class Echo(Actor[Any]):
    """Answers every message with the message itself; counts what it handled.

    Args:
        prefix: Prepended to string messages (an option in the config: ``options = { prefix = "> " }``).
    """

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.handled = 0

    def receive(self, message: Any) -> Any:
        self.handled += 1
        if self.prefix and isinstance(message, str):
            return f"{self.prefix}{message}"
        return message
