"""Volume spread of a query (al.max_per_case, al.min_slice_gap) and the walk that applies it.

Every query is built by walking one or more orders of the candidates (a ranking, a sample, a
random permutation) and taking each slice it offers unless it was taken already. With limits,
a slice is also skipped when its case already gave `max_per_case` slices to this query, or when
a slice of its case already in the query is fewer than `min_slice_gap` slices away along the
slicing axis. If the walk ends short of k, the query is filled from the skipped slices in the
order they were skipped (logged once). Without limits (both 0) nothing is skipped: the walk
takes exactly what the orders give, as before the limits existed.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from absl import logging


@dataclasses.dataclass(frozen=True)
class Spread:
    """The limits and where each candidate comes from.

    Attributes:
      case: [U] int case (subject) of each candidate position.
      slice_index: [U] int index of each candidate along the slicing axis of its case.
      max_per_case: most slices one case may give to one query; 0 = no limit.
      min_slice_gap: two queried slices of one case at least this many slices apart; 0 = off.
    """

    case: np.ndarray
    slice_index: np.ndarray
    max_per_case: int = 0
    min_slice_gap: int = 0

    @classmethod
    def of(cls, subject, slice_index, ids, max_per_case: int, min_slice_gap: int):
        """The limits for the pool ids `ids` (candidates) of a pool whose slice i comes from
        case subject[i] at slice_index[i] (a SliceSet's fields); None when both are off."""
        if not max_per_case and not min_slice_gap:
            return None
        ids = np.asarray(ids, np.int64)
        return cls(
            np.asarray(subject)[ids],
            np.asarray(slice_index)[ids],
            int(max_per_case),
            int(min_slice_gap),
        )

    def describe(self) -> str:
        return f"al.max_per_case={self.max_per_case}, al.min_slice_gap={self.min_slice_gap}"


class QueryBuilder:
    """A query of at most k candidate positions, taken in the order they are offered.

    Args:
      k: the slices wanted (the caller caps it at the candidates).
      spread: the limits, or None.
    """

    def __init__(self, k: int, spread: Spread | None = None):
        self.k, self.spread = k, spread
        self.picked: list[int] = []
        self.streams: list[str] = []
        self._seen: set[int] = set()
        self._skipped: dict[int, str] = {}  # position -> the stream that skipped it, in order
        self._by_case: dict[int, list[int]] = {}

    @property
    def full(self) -> bool:
        return len(self.picked) >= self.k

    def _allows(self, position: int) -> bool:
        s = self.spread
        taken = self._by_case.get(int(s.case[position]), [])
        if s.max_per_case and len(taken) >= s.max_per_case:
            return False
        index = int(s.slice_index[position])
        return not (s.min_slice_gap and any(abs(index - t) < s.min_slice_gap for t in taken))

    def offer(self, position, stream: str) -> str:
        """'taken', 'seen' (already in the query) or 'skipped' (the limits refuse it)."""
        position = int(position)
        if position in self._seen:
            return "seen"
        if self.spread is not None and not self._allows(position):
            self._skipped.setdefault(position, stream)
            return "skipped"
        self._seen.add(position)
        self.picked.append(position)
        self.streams.append(stream)
        if self.spread is not None:
            case = int(self.spread.case[position])
            self._by_case.setdefault(case, []).append(int(self.spread.slice_index[position]))
        return "taken"

    def next_taken(self, it, stream: str) -> str | None:
        """Offers `it`'s entries until one is taken or seen; None when `it` runs out."""
        for position in it:
            outcome = self.offer(position, stream)
            if outcome != "skipped":
                return outcome
        return None

    def walk(self, order, stream: str) -> None:
        """Offers `order`'s entries until the query is full."""
        for position in order:
            if self.full:
                return
            self.offer(position, stream)

    def finish(self) -> tuple[list[int], list[str]]:
        """(positions, streams), filled from the skipped slices if the walk ended short."""
        missing = self.k - len(self.picked)
        if missing > 0 and self._skipped:
            fill = [(p, s) for p, s in self._skipped.items() if p not in self._seen][:missing]
            logging.warning(
                "volume spread (%s) left %d of the %d slices of the query unfilled; filling "
                "them from the %d slices the limits skipped, in order",
                self.spread.describe(),
                missing,
                self.k,
                len(self._skipped),
            )
            for position, stream in fill:
                self._seen.add(position)
                self.picked.append(position)
                self.streams.append(stream)
        return self.picked, self.streams
