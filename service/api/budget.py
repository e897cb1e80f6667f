"""How many bytes the unfinished request bodies of one process may hold, all together."""

from __future__ import annotations


class BodyBudget:
    """A count of the bytes held by bodies still arriving, against one ceiling.

    Each body takes its bytes as they arrive and gives them all back when it is complete or
    abandoned. One event loop runs every take and give, so a plain counter is enough.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0

    def take(self, size: int) -> bool:
        """Hold ``size`` more bytes, if they fit; False (and nothing held) when they do not."""
        if self.held + size > self.capacity:
            return False
        self.held += size
        return True

    def give(self, size: int) -> None:
        self.held -= size
