"""Configuration of a :class:`~batcher.Batcher`: one frozen, validated dataclass."""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from os import PathLike
from typing import Any, Literal, TypeAlias

__all__ = ["BatcherConfig", "Casting", "OnFull", "Strategy"]

Strategy: TypeAlias = Literal["decompose", "pad", "auto"]
OnFull: TypeAlias = Literal["wait", "reject"]
Casting: TypeAlias = Literal["no", "equiv", "safe", "same_kind"]

_STRATEGIES = ("decompose", "pad", "auto")
_ON_FULL = ("wait", "reject")
_CASTINGS = ("no", "equiv", "safe", "same_kind")
_HINTS = ("THROUGHPUT", "LATENCY", "CUMULATIVE_THROUGHPUT")
DEFAULT_DYNAMIC_MAX_BATCH = 32


@dataclass(frozen=True, slots=True)
class BatcherConfig:
    """How a :class:`~batcher.Batcher` compiles, plans and queues.

    Times are seconds as floats. Every field is checked when the config is built; a broken
    rule raises :class:`ValueError` naming the rule.
    """

    #: The precompiled batch sizes, or ``"dynamic"`` for one model with a dynamic batch axis.
    batch_sizes: tuple[int, ...] | Literal["dynamic"] = (1, 2, 4, 8)
    #: How pending samples are cut into chunks: fewest exact chunks, padding, or cost-based.
    strategy: Strategy = "auto"
    #: Largest chunk in ``"dynamic"`` mode (static modes use ``max(batch_sizes)``).
    max_batch_size: int | None = None
    #: How long a sample may wait for companions while a bigger chunk is forming and other
    #: chunks are already running. 0 dispatches whenever a device slot is free.
    max_delay: float = 0.0
    device: str = "CPU"
    performance_hint: str = "THROUGHPUT"
    #: Chunks running at once across all sizes; ``None`` asks OpenVINO for its optimum.
    max_inflight_chunks: int | None = None
    #: Samples that may wait in the queue; ``None`` is unbounded.
    max_queue_size: int | None = 65536
    #: What ``submit`` does when the queue is full: wait for room, or raise ``QueueFull``.
    on_full: OnFull = "wait"
    #: Deadline applied to requests that pass no ``timeout``; ``None`` means none.
    default_timeout: float | None = None
    #: Number of priority levels; ``submit(priority=...)`` takes ``0..priority_levels-1``.
    priority_levels: int = 1
    #: Value written into padded rows (rows computed and discarded).
    pad_value: float = 0.0
    #: numpy casting rule a sample's dtype must satisfy to be converted to the model's dtype.
    input_casting: Casting = "same_kind"
    #: Bound on the graceful drain at close; queued or running callers left after it get
    #: ``BatcherClosed``. ``None`` waits for all of them.
    drain_timeout: float | None = 30.0
    #: Seconds spent at start-up measuring each compiled size (``"auto"`` only, no cost file).
    profile_budget: float = 1.0
    #: A cost table saved by an earlier run (JSON), loaded instead of profiling.
    cost_table_path: str | None = None
    #: Weight of each live chunk timing in the moving-average cost table; 0 freezes it.
    cost_smoothing: float = 0.05
    #: Extra OpenVINO compile properties, as (key, value) string pairs.
    ov_config: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        sizes: Any = self.batch_sizes
        if isinstance(sizes, str):
            if sizes != "dynamic":
                raise ValueError(
                    f'batch_sizes must be a list of positive integers or "dynamic", got {sizes!r}'
                )
        else:
            sizes = tuple(sizes)
            if not sizes:
                raise ValueError("batch_sizes must not be empty")
            for size in sizes:
                if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                    raise ValueError(f"batch_sizes must be positive integers, got {size!r}")
            repeated = sorted({s for s in sizes if sizes.count(s) > 1})
            if repeated:
                raise ValueError(f"batch_sizes must not repeat a size, {repeated} repeat")
            sizes = tuple(sorted(sizes))
            if self.strategy == "decompose" and 1 not in sizes:
                raise ValueError(
                    'batch_sizes must contain 1 with strategy "decompose" (without it some '
                    'counts cannot be split exactly); use strategy "pad" or "auto" to allow '
                    "padding"
                )
            if self.max_batch_size is not None:
                raise ValueError(
                    'max_batch_size applies only to batch_sizes = "dynamic"; with static '
                    "sizes the largest batch size is the maximum"
                )
        object.__setattr__(self, "batch_sizes", sizes)
        _one_of("strategy", self.strategy, _STRATEGIES)
        _one_of("on_full", self.on_full, _ON_FULL)
        _one_of("input_casting", self.input_casting, _CASTINGS)
        _one_of("performance_hint", self.performance_hint, _HINTS)
        _positive_int_or_none("max_batch_size", self.max_batch_size)
        _positive_int_or_none("max_inflight_chunks", self.max_inflight_chunks)
        _positive_int_or_none("max_queue_size", self.max_queue_size)
        _positive_int_or_none("priority_levels", self.priority_levels)
        if self.priority_levels is None:
            raise ValueError("priority_levels must be a positive integer, got None")
        _seconds("max_delay", self.max_delay)
        _seconds("profile_budget", self.profile_budget)
        if self.default_timeout is not None:
            _seconds("default_timeout", self.default_timeout, allow_zero=False)
        if self.drain_timeout is not None:
            _seconds("drain_timeout", self.drain_timeout)
        if not 0.0 <= self.cost_smoothing <= 1.0:
            raise ValueError(f"cost_smoothing must be within [0, 1], got {self.cost_smoothing!r}")
        if not isinstance(self.pad_value, int | float) or not math.isfinite(self.pad_value):
            raise ValueError(f"pad_value must be a finite number, got {self.pad_value!r}")
        if not isinstance(self.device, str) or not self.device:
            raise ValueError("device must be a non-empty OpenVINO device name such as 'CPU'")
        ov_config: Any = self.ov_config
        if isinstance(ov_config, Mapping):
            ov_config = ov_config.items()
        object.__setattr__(self, "ov_config", tuple((str(k), str(v)) for k, v in ov_config))

    @property
    def dynamic(self) -> bool:
        """True when one model with a dynamic batch axis serves every chunk size."""
        return self.batch_sizes == "dynamic"

    @property
    def largest_batch(self) -> int:
        """The largest chunk the planner may form."""
        if isinstance(self.batch_sizes, str):
            return self.max_batch_size or DEFAULT_DYNAMIC_MAX_BATCH
        return self.batch_sizes[-1]

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> BatcherConfig:
        """Build a config from plain values (as read from TOML); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; known keys are {sorted(known)}")
        kwargs = dict(values)
        if isinstance(kwargs.get("batch_sizes"), list):
            kwargs["batch_sizes"] = tuple(kwargs["batch_sizes"])
        if isinstance(kwargs.get("ov_config"), Mapping):
            kwargs["ov_config"] = tuple(kwargs["ov_config"].items())
        return cls(**kwargs)

    @classmethod
    def from_toml(cls, path: str | PathLike[str], table: str | None = "batcher") -> BatcherConfig:
        """Load a config from a TOML file.

        The keys live in the ``[batcher]`` table when the file has one, else at top level;
        other tables (such as ``[server]``) are left to their own readers.
        """
        with open(path, "rb") as file:
            document = tomllib.load(file)
        if table is not None and isinstance(document.get(table), dict):
            return cls.from_mapping(document[table])
        return cls.from_mapping({k: v for k, v in document.items() if not isinstance(v, dict)})

    def to_toml(self) -> str:
        """Render this config as a ``[batcher]`` TOML table that :meth:`from_toml` reads back."""
        lines = ["[batcher]"]
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or f.name == "ov_config":
                continue
            lines.append(f"{f.name} = {_toml_value(value)}")
        if self.ov_config:
            lines.append("")
            lines.append("[batcher.ov_config]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in self.ov_config)
        return "\n".join(lines) + "\n"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def _one_of(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        choices = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _positive_int_or_none(name: str, value: object) -> None:
    if value is not None:
        _positive_int(name, value)


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _seconds(name: str, value: object, *, allow_zero: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound} seconds, got {value!r}")
