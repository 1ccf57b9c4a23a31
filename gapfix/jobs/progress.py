"""Progress reporting: a tqdm bar (items/s, ETA) on a terminal, periodic log lines otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from gapfix.errors import InputError

MODES = ("auto", "bar", "log", "off")


def check_mode(mode: str) -> None:
    """Raise InputError unless ``mode`` is one of `MODES` (the ``--progress`` values)."""
    if mode not in MODES:
        raise InputError(f"--progress must be auto, bar, log or off, got {mode!r}", "progress")


def _fmt_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


class Progress:
    """Counts processed items and failures, and shows them.

    ``mode`` is ``"auto"`` (bar when ``stream`` is a TTY, lines otherwise), ``"bar"``,
    ``"log"`` or ``"off"``. Log lines go out at most every ``interval`` seconds.
    """

    def __init__(
        self,
        desc: str,
        total: int | None,
        *,
        mode: str = "auto",
        interval: float = 10.0,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.desc = desc
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.clock = clock
        self.items = 0
        self.failures = 0
        self.start = clock()
        self._last_log = self.start
        if mode == "auto":
            isatty = getattr(self.stream, "isatty", lambda: False)
            mode = "bar" if isatty() else "log"
        self.mode = mode
        self._bar: Any = None
        if mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, desc=desc, unit="item", file=self.stream, dynamic_ncols=True
            )

    def update(self, items: int, failures: int = 0) -> None:
        """Record ``items`` more processed items, ``failures`` of them (partly) skipped."""
        self.items += items
        self.failures += failures
        if self._bar is not None:
            self._bar.update(items)
            if failures:
                self._bar.set_postfix(failures=self.failures, refresh=False)
        elif self.mode == "log":
            now = self.clock()
            if now - self._last_log >= self.interval:
                self._last_log = now
                self.log_line(now)

    def rate(self, now: float | None = None) -> float:
        """Items per second since the start."""
        now = self.clock() if now is None else now
        return self.items / max(now - self.start, 1e-9)

    def log_line(self, now: float | None = None) -> None:
        """Print one progress line (items, %, items/s, ETA, failures)."""
        rate = self.rate(now)
        if self.total:
            pct = 100.0 * self.items / self.total
            eta = (self.total - self.items) / rate if rate > 0 else float("inf")
            eta_s = _fmt_eta(eta) if eta != float("inf") else "?"
            head = f"{self.items}/{self.total} items ({pct:.1f}%)"
            tail = f", ETA {eta_s}"
        else:
            head, tail = f"{self.items} items", ""
        print(
            f"{self.desc}: {head}, {rate:.1f} items/s{tail}, {self.failures} failures",
            file=self.stream,
            flush=True,
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
