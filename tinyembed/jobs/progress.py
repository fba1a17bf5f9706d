"""The progress bar of `tinyembed embed -o` (drawn on stderr when it is a terminal) and the
plain progress lines of a block run elsewhere (a log file, a cluster job's output)."""

from __future__ import annotations

import sys
import time


class Progress:
    """`[#####.....]  45.1%  4,510/10,000  1,234 texts/s  15,678 tok/s  ETA 0:00:04` on a terminal."""

    WIDTH = 24

    def __init__(self, total: int, done: int, enabled: bool):
        self.total, self.done, self.enabled = total, done, enabled
        self.start_done, self.started, self.tokens = done, time.monotonic(), 0
        self.drawn = False
        if enabled:
            self._draw()

    def update(self, records: int, tokens: int) -> None:
        self.done += records
        self.tokens += tokens
        if self.enabled:
            self._draw()

    def _draw(self) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = (self.done - self.start_done) / elapsed
        share = self.done / self.total if self.total else 1.0
        eta = (self.total - self.done) / rate if rate > 0 else None
        filled = int(share * self.WIDTH)
        text = (f"\r[{'#' * filled}{'.' * (self.WIDTH - filled)}] {share:6.1%}  {self.done:,}/{self.total:,}  "
                f"{rate:,.0f} texts/s  {self.tokens / elapsed:,.0f} tok/s  ETA {_clock(eta)}")
        sys.stderr.write(text)
        sys.stderr.flush()
        self.drawn = True

    def finish(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.drawn = False


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--:--"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressLines:
    """Off a terminal: one line every `every` seconds (and a last one), for logs of long runs."""

    def __init__(self, total: int, done: int, unit: str, every: float = 10.0):
        self.total, self.done, self.unit, self.every = total, done, unit, every
        self.start_done, self.started, self.tokens = done, time.monotonic(), 0
        self.last = self.started

    def update(self, count: int, tokens: int) -> None:
        self.done += count
        self.tokens += tokens
        now = time.monotonic()
        if now - self.last >= self.every or self.done == self.total:
            self.last = now
            elapsed = max(now - self.started, 1e-9)
            print(f"tinyembed embed: {self.done}/{self.total} {self.unit}  {self.tokens / elapsed:,.0f} tok/s",
                  file=sys.stderr, flush=True)

    def finish(self) -> None:
        pass
