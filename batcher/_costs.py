"""Seconds per inference of each compiled batch size: measured, saved, loaded, refreshed."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from types import MappingProxyType

__all__ = ["CostTable", "LiveCosts"]


@dataclass(frozen=True, slots=True)
class CostTable:
    """Median seconds per inference for each batch size, and where the figures came from."""

    seconds: Mapping[int, float]
    #: ``"profiled"`` (measured at start-up), ``"file"`` (loaded), ``"live"`` (moving
    #: average of real chunk timings) or ``"assumed"`` (no measurement: cost grows with size).
    source: str = "profiled"
    #: Host seconds each chunk costs besides the inference (filling, handing to a worker
    #: thread, delivering): what makes many tiny chunks slower than their device time says.
    overhead: float = 0.0

    def __post_init__(self) -> None:
        if not self.overhead >= 0:
            raise ValueError(f"cost table overhead must be >= 0 seconds, got {self.overhead}")
        table = {int(size): float(sec) for size, sec in self.seconds.items()}
        for size, sec in table.items():
            if size < 1 or not sec > 0:
                raise ValueError(
                    f"cost table entries must map a positive size to positive seconds, "
                    f"got {size}: {sec}"
                )
        object.__setattr__(self, "seconds", MappingProxyType(dict(sorted(table.items()))))

    @classmethod
    def assumed(cls, sizes: tuple[int, ...]) -> CostTable:
        """A stand-in before any measurement: a fixed overhead plus a cost per row."""
        return cls({s: 1.0 + s for s in sizes}, source="assumed")

    def to_json(self) -> str:
        return json.dumps(
            {
                "source": self.source,
                "overhead": self.overhead,
                "seconds": {str(k): v for k, v in self.seconds.items()},
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> CostTable:
        data = json.loads(text)
        return cls(
            {int(k): float(v) for k, v in data["seconds"].items()},
            source="file",
            overhead=float(data.get("overhead", 0.0)),
        )

    def save(self, path: str | PathLike[str]) -> None:
        with open(path, "w", encoding="utf-8") as file:
            file.write(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | PathLike[str]) -> CostTable:
        with open(path, encoding="utf-8") as file:
            return cls.from_json(file.read())


class LiveCosts:
    """A cost table that follows real chunk timings with an exponential moving average.

    ``drifted`` tells the planner when its memoised plans were built on figures that moved by
    more than ``tolerance``, so plans are rebuilt rarely, not per chunk.
    """

    __slots__ = ("_planned", "_seconds", "overhead", "smoothing", "source", "tolerance")

    def __init__(self, table: CostTable, smoothing: float, tolerance: float = 0.1) -> None:
        self._seconds = dict(table.seconds)
        self.overhead = table.overhead
        self._planned = dict(table.seconds)
        self.smoothing = smoothing
        self.tolerance = tolerance
        self.source = table.source

    def observe(self, size: int, seconds: float) -> None:
        """Fold in one chunk's wall time (dispatch to results, overhead included)."""
        seconds -= self.overhead
        if self.smoothing <= 0 or seconds <= 0 or size not in self._seconds:
            return
        old = self._seconds[size]
        self._seconds[size] = old + self.smoothing * (seconds - old)
        self.source = "live"

    @property
    def drifted(self) -> bool:
        tol = self.tolerance
        return any(
            abs(now - self._planned[s]) > tol * self._planned[s] for s, now in self._seconds.items()
        )

    def mark_planned(self) -> dict[int, float]:
        self._planned = dict(self._seconds)
        return self._planned

    def snapshot(self) -> CostTable:
        return CostTable(dict(self._seconds), source=self.source, overhead=self.overhead)
