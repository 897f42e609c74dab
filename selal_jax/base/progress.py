"""Progress bars (tqdm: count, rate and time left) for training epochs and pool scoring.

Only process 0 of a multi-host run shows them (every process runs the same loop). On a terminal
the bar is redrawn in place; otherwise (logs, CI) a line at most every 10 seconds.
"""

from __future__ import annotations

import sys

import jax


class Progress:
    """`update(done, info)` sets the count to `done` (absolute, not an increment) and shows
    `info` after the bar; `close()` leaves the final line."""

    def __init__(self, label: str, total: int, unit: str = "", stream=None):
        # Imported here: the benchmarks import train.py without needing tqdm (a GPU image may
        # lack it); only runs that train or score the pool show bars.
        from tqdm import tqdm

        stream = stream or sys.stderr
        tty = hasattr(stream, "isatty") and stream.isatty()
        self.bar = tqdm(
            total=total,
            desc=label,
            unit=f" {unit}" if unit else "it",
            file=stream,
            mininterval=0.5 if tty else 10.0,
            dynamic_ncols=tty,
            ascii=not tty,
            disable=jax.process_index() != 0,
            leave=True,
        )

    def update(self, done: int, info: str = "") -> None:
        if info:
            self.bar.set_postfix_str(info, refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        self.bar.close()
