"""A minimal progress display: one rewritten line on a terminal, periodic lines otherwise."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(
        self, label: str, total: int, unit: str = "", stream=None, min_interval: float = 0.5
    ):
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = self.last = time.time()
        self.min_interval = min_interval if self.tty else 10.0
        self.text = ""

    def update(self, done: int, info: str = "") -> None:
        now = time.time()
        self.text = (
            f"{self.label}: {done}/{self.total} {self.unit} {info} [{now - self.start:.1f}s]"
        )
        if now - self.last >= self.min_interval or done >= self.total:
            self.last = now
            self._emit()

    def _emit(self) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + self.text)
        else:
            self.stream.write(self.text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self.text:
            self.stream.write("\r\033[K" + self.text + "\n")
            self.stream.flush()
