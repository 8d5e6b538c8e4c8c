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
    #: How many chunks the device really runs side by side (measured: the speed-up of all
    #: slots busy over one); 0 means unknown, and the planner trusts the slot count.
    parallelism: float = 0.0

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

    def effective_slots(self, free: int) -> float:
        """Slots the planner should count when ``free`` are free."""
        return min(float(free), self.parallelism) if self.parallelism > 0 else float(free)

    def to_json(self) -> str:
        return json.dumps(
            {
                "source": self.source,
                "overhead": self.overhead,
                "parallelism": self.parallelism,
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
            parallelism=float(data.get("parallelism", 0.0)),
        )

    def save(self, path: str | PathLike[str]) -> None:
        with open(path, "w", encoding="utf-8") as file:
            file.write(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | PathLike[str]) -> CostTable:
        with open(path, encoding="utf-8") as file:
            return cls.from_json(file.read())


class LiveCosts:
    """A cost table that follows the device's real speed.

    Live chunk timings move one shared speed factor (an exponential moving average of
    measured / tabled seconds), not each size on its own: sizes in use would otherwise get
    slower under load while rarely used ones kept their quiet-machine figures and looked
    cheap, and the plan would chase them. ``drifted`` tells the planner when its memoised
    plans were built on a factor that moved by more than ``tolerance``.
    """

    __slots__ = (
        "_base",
        "_planned",
        "factor",
        "overhead",
        "parallelism",
        "smoothing",
        "source",
        "tolerance",
    )

    def __init__(self, table: CostTable, smoothing: float, tolerance: float = 0.1) -> None:
        self._base = dict(table.seconds)
        self.overhead = table.overhead
        self.parallelism = table.parallelism
        self.smoothing = smoothing
        self.tolerance = tolerance
        self.source = table.source
        self.factor = 1.0
        self._planned = 1.0

    def observe(self, size: int, seconds: float) -> None:
        """Fold in one chunk's device seconds."""
        base = self._base.get(size)
        if self.smoothing <= 0 or seconds <= 0 or base is None:
            return
        self.factor += self.smoothing * (seconds / base - self.factor)
        self.source = "live"

    @property
    def drifted(self) -> bool:
        return abs(self.factor - self._planned) > self.tolerance * self._planned

    def mark_planned(self) -> dict[int, float]:
        self._planned = self.factor
        return self.current()

    def current(self) -> dict[int, float]:
        return {size: base * self.factor for size, base in self._base.items()}

    def snapshot(self) -> CostTable:
        return CostTable(
            self.current(),
            source=self.source,
            overhead=self.overhead,
            parallelism=self.parallelism,
        )
