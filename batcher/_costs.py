"""Seconds per inference of each compiled batch size: measured, saved, loaded, refreshed."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from os import PathLike
from types import MappingProxyType

__all__ = ["CostTable", "LiveCosts", "plausible_shape"]


@dataclass(frozen=True, slots=True)
class CostTable:
    """Median seconds per inference for each batch size, and where the figures came from."""

    #: Seconds one inference of each size takes with the device otherwise idle.
    seconds: Mapping[int, float]
    #: ``"profiled"`` (measured at start-up), ``"file"`` (loaded), ``"live"`` (moving
    #: average of real chunk timings) or ``"assumed"`` (no measurement: cost grows with size).
    source: str = "profiled"
    #: Host seconds each chunk costs besides the inference (filling, handing to a worker
    #: thread, delivering): what makes many tiny chunks slower than their device time says.
    overhead: float = 0.0
    #: Seconds one inference of each size holds its slot while every slot is busy with the
    #: same size: what a chunk really costs under load, where slots share cores and memory
    #: bandwidth. Empty means unmeasured, taken as ``seconds`` (slots that never contend).
    shared_seconds: Mapping[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.overhead >= 0:
            raise ValueError(f"cost table overhead must be >= 0 seconds, got {self.overhead}")
        object.__setattr__(self, "seconds", _checked("", self.seconds))
        shared = _checked("shared ", self.shared_seconds)
        if shared and set(shared) != set(self.seconds):
            raise ValueError(
                f"cost table shared entries must cover the same sizes as its seconds, got "
                f"{sorted(shared)} and {sorted(self.seconds)}"
            )
        object.__setattr__(self, "shared_seconds", shared)

    @classmethod
    def assumed(cls, sizes: tuple[int, ...]) -> CostTable:
        """A stand-in before any measurement: a fixed overhead plus a cost per row."""
        return cls({s: 1.0 + s for s in sizes}, source="assumed")

    @property
    def shared(self) -> Mapping[int, float]:
        """``shared_seconds`` where measured, else ``seconds``."""
        return self.shared_seconds or self.seconds

    def scaled(self, factor: float, source: str, overhead: float) -> CostTable:
        """Every device figure times ``factor`` (the device as a whole got faster or
        slower), with a new host ``overhead``."""
        return CostTable(
            {size: sec * factor for size, sec in self.seconds.items()},
            source=source,
            overhead=overhead,
            shared_seconds={size: sec * factor for size, sec in self.shared_seconds.items()},
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "source": self.source,
                "overhead": self.overhead,
                "seconds": {str(k): v for k, v in self.seconds.items()},
                "shared_seconds": {str(k): v for k, v in self.shared_seconds.items()},
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
            shared_seconds={int(k): float(v) for k, v in data.get("shared_seconds", {}).items()},
        )

    def save(self, path: str | PathLike[str]) -> None:
        with open(path, "w", encoding="utf-8") as file:
            file.write(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | PathLike[str]) -> CostTable:
        with open(path, encoding="utf-8") as file:
            return cls.from_json(file.read())


def _checked(kind: str, seconds: Mapping[int, float]) -> Mapping[int, float]:
    table = {int(size): float(sec) for size, sec in seconds.items()}
    for size, sec in table.items():
        if size < 1 or not sec > 0:
            raise ValueError(
                f"cost table {kind}entries must map a positive size to positive seconds, "
                f"got {size}: {sec}"
            )
    return MappingProxyType(dict(sorted(table.items())))


def plausible_shape(
    seconds: Mapping[int, float], floor: Mapping[int, float] | None = None
) -> dict[int, float]:
    """Measured seconds per size, corrected to what batching can physically do.

    A row never costs more in a bigger chunk than in a smaller one, so splitting never looks
    like it saves device time. On a shared machine one profile's figures stray by up to a
    third (the MLP's 32-row chunk measured 1.59, 1.76 and 2.22 ms in three start-ups, with
    16 rows at 0.74-0.97 ms). Trusting such a reading made ``auto`` start 16 of 32 waiting
    samples on its one free slot and put 16 back (47 of 1,286 plans in a trace at 64
    callers), and live timings scale the whole table, so they cannot undo a wrong shape.
    Where sizes break the rule, their seconds per row are pooled to the mean of theirs (a
    least-squares fit that keeps the rule), so neither reading is trusted over the other
    and one low reading cannot cap every bigger size.

    Then more rows never cost less than fewer (a measured inversion, seen: 2 rows 0.28 ms
    < 1 row 0.30 ms on the MLP, is noise, and trusting it makes ``auto`` pad every lone
    sample to 2 rows), nor less than ``floor`` (the idle figures, when correcting shared
    ones: company never makes a chunk faster). The floor wins over the per-row rule where
    the two disagree.
    """
    sizes = sorted(seconds)
    # Pool adjacent violators: blocks of consecutive sizes sharing one mean seconds per row,
    # merged while a block's mean is below the next one's (only then: a table that keeps
    # the rule comes back exactly as measured).
    blocks: list[tuple[float, int]] = []  # (sum of seconds per row, sizes in the block)
    for size in sizes:
        total, count = seconds[size] / size, 1
        while blocks and blocks[-1][0] / blocks[-1][1] < total / count:
            last_total, last_count = blocks.pop()
            total, count = total + last_total, count + last_count
        blocks.append((total, count))
    pooled = [(total / count, count > 1) for total, count in blocks for _ in range(count)]
    shaped: dict[int, float] = {}
    top = 0.0
    for size, (row, merged) in zip(sizes, pooled, strict=True):
        # A size left alone keeps its reading exactly: row * size may round it.
        own = row * size if merged else seconds[size]
        low = floor[size] if floor is not None else 0.0
        shaped[size] = top = max(own, low, top)
    return shaped


class LiveCosts:
    """A cost table that follows the device's real speed and the host's real overhead.

    Live chunk timings move one shared speed factor (an exponential moving average of
    measured / tabled seconds), not each size on its own: sizes in use would otherwise get
    slower under load while rarely used ones kept their quiet-machine figures and looked
    cheap, and the plan would chase them. A chunk that ran beside others is compared with
    the shared figure, a lone one with the idle figure, so contention the table already
    knows about does not count as a slower device.

    The overhead per chunk follows the host time each chunk really adds (its round trip
    minus its device time). It grows with the event loop's load, when the loop also serves
    other chunks' callers, so a busy batcher plans fewer, fuller chunks. ``drifted`` tells
    the planner when its memoised plans were built on figures that moved by more than
    ``tolerance``.
    """

    __slots__ = (
        "_base",
        "_planned",
        "_planned_overhead",
        "factor",
        "overhead",
        "smoothing",
        "source",
        "tolerance",
    )

    def __init__(self, table: CostTable, smoothing: float, tolerance: float = 0.1) -> None:
        self._base = table
        self.smoothing = smoothing
        self.tolerance = tolerance
        self.source = table.source
        self.factor = 1.0
        self.overhead = table.overhead
        self._planned = 1.0
        self._planned_overhead = table.overhead

    def observe(
        self, size: int, seconds: float, shared: bool = False, host: float | None = None
    ) -> None:
        """Fold in one chunk's device seconds and, if given, the host seconds it added.

        ``shared``: other chunks ran beside it.
        """
        base = (self._base.shared if shared else self._base.seconds).get(size)
        if self.smoothing <= 0 or seconds <= 0 or base is None:
            return
        self.factor += self.smoothing * (seconds / base - self.factor)
        if host is not None:
            self.overhead += self.smoothing * (max(host, 0.0) - self.overhead)
        self.source = "live"

    @property
    def drifted(self) -> bool:
        tolerance = self.tolerance
        # Overhead drift counts against the cheapest chunk: that is the scale it competes at.
        scale = self._planned_overhead + min(self._base.seconds.values()) * self._planned
        return (
            abs(self.factor - self._planned) > tolerance * self._planned
            or abs(self.overhead - self._planned_overhead) > tolerance * scale
        )

    def mark_planned(self) -> CostTable:
        """The table to plan with now; ``drifted`` measures from this moment."""
        self._planned = self.factor
        self._planned_overhead = self.overhead
        return self.snapshot()

    def snapshot(self) -> CostTable:
        return self._base.scaled(self.factor, self.source, self.overhead)
