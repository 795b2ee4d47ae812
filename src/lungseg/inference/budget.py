"""A budget of image pixels that threads share, so that the images held in memory at once stay
bounded however large each one is (lungseg.inference.predict reads and writes in worker threads)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class PixelBudget:
    """How many image pixels the worker threads may hold at once.

    A blocking take lets an image larger than the whole budget through when nothing else is held, so the
    largest runs alone; a non-blocking take (for a display copy kept until its write) never goes over.
    Takes are not queued: a large one gets its turn because the caller (lungseg.inference.predict) submits
    only a few batches ahead, not because of the budget.

    Args:
        limit: pixels, counted by each image's full size.
    """

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0
        self._changed = threading.Condition()

    def take(self, pixels: int, wait: bool = True) -> bool:
        """Reserve `pixels` of the budget.

        Args:
            pixels: how many to reserve.
            wait: block until they fit (default True); False returns at once.

        Returns:
            Whether they were reserved: always True with `wait`.
        """
        with self._changed:
            fits = lambda: self.used + pixels <= self.limit or (wait and self.used == 0)  # noqa: E731
            if wait:
                self._changed.wait_for(fits)
            elif not fits():
                return False
            self.used += pixels
            return True

    def give(self, pixels: int) -> None:
        """Return what take reserved.

        Args:
            pixels: the count given to take.
        """
        with self._changed:
            self.used -= pixels
            self._changed.notify_all()

    @contextmanager
    def held(self, pixels: int) -> Iterator[None]:
        """take(pixels) for the duration of a block, given back when it ends.

        Args:
            pixels: how many to hold (a blocking take).
        """
        self.take(pixels)
        try:
            yield
        finally:
            self.give(pixels)
