from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from batcher import BatcherConfig


def test_defaults_are_valid_and_sizes_are_sorted() -> None:
    assert BatcherConfig().batch_sizes == (1, 2, 4, 8)
    assert BatcherConfig(batch_sizes=(8, 1, 4)).batch_sizes == (1, 4, 8)
    assert BatcherConfig(batch_sizes=[2, 1]).batch_sizes == (1, 2)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_sizes": ()}, "batch_sizes must not be empty"),
        ({"batch_sizes": (1, 0)}, "batch_sizes must be positive integers"),
        ({"batch_sizes": (1, 2.5)}, "batch_sizes must be positive integers"),
        ({"batch_sizes": (1, 4, 4)}, "batch_sizes must not repeat a size"),
        ({"batch_sizes": (2, 4), "strategy": "decompose"}, "batch_sizes must contain 1"),
        ({"batch_sizes": "static"}, 'list of positive integers or "dynamic"'),
        ({"max_batch_size": 8}, 'max_batch_size applies only to batch_sizes = "dynamic"'),
        ({"strategy": "greedy"}, "strategy must be one of"),
        ({"max_delay": -0.001}, "max_delay must be >= 0 seconds"),
        ({"max_delay": float("nan")}, "max_delay must be a finite number of seconds"),
        ({"default_timeout": 0}, "default_timeout must be > 0 seconds"),
        ({"max_queue_size": 0}, "max_queue_size must be a positive integer"),
        ({"priority_levels": 0}, "priority_levels must be a positive integer"),
        ({"on_full": "drop"}, "on_full must be one of"),
        ({"input_casting": "unsafe"}, "input_casting must be one of"),
        ({"cost_smoothing": 1.5}, r"cost_smoothing must be within \[0, 1\]"),
        ({"device": ""}, "device must be a non-empty"),
        ({"performance_hint": "FAST"}, "performance_hint must be one of"),
    ],
)
def test_each_broken_rule_is_named(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BatcherConfig(**kwargs)


def test_padding_strategies_do_not_need_size_one() -> None:
    assert BatcherConfig(batch_sizes=(4, 8), strategy="pad").batch_sizes == (4, 8)
    assert BatcherConfig(batch_sizes=(4, 8), strategy="auto").batch_sizes == (4, 8)


def test_dynamic_mode_has_a_largest_chunk() -> None:
    assert BatcherConfig(batch_sizes="dynamic").largest_batch == 32
    assert BatcherConfig(batch_sizes="dynamic", max_batch_size=12).largest_batch == 12
    assert BatcherConfig(batch_sizes=(1, 16)).largest_batch == 16


def test_config_is_frozen() -> None:
    config = BatcherConfig()
    with pytest.raises(AttributeError):
        config.max_delay = 1.0  # type: ignore[misc]


def test_from_toml_reads_the_batcher_table(tmp_path: Path) -> None:
    path = tmp_path / "batcher.toml"
    path.write_text(
        '[batcher]\nbatch_sizes = [1, 4, 16]\nstrategy = "pad"\nmax_delay = 0.002\n'
        '[batcher.ov_config]\nINFERENCE_NUM_THREADS = "1"\n'
        "[server]\nport = 1234\n"
    )
    config = BatcherConfig.from_toml(path)
    assert config.batch_sizes == (1, 4, 16)
    assert config.strategy == "pad"
    assert config.max_delay == 0.002
    assert config.ov_config == (("INFERENCE_NUM_THREADS", "1"),)


def test_from_toml_reads_top_level_keys_and_names_unknown_ones(tmp_path: Path) -> None:
    path = tmp_path / "flat.toml"
    path.write_text('batch_sizes = "dynamic"\nmax_batch_size = 8\n')
    assert BatcherConfig.from_toml(path).largest_batch == 8
    path.write_text("[server]\nport = 1\n")
    assert BatcherConfig.from_toml(path) == BatcherConfig()  # other tables are not ours
    path.write_text("batch_size = [1, 2]\n")
    with pytest.raises(ValueError, match=r"unknown config keys \['batch_size'\]"):
        BatcherConfig.from_toml(path)


def test_to_toml_round_trips(tmp_path: Path) -> None:
    config = BatcherConfig(
        batch_sizes=(1, 2, 8),
        strategy="auto",
        max_delay=0.001,
        default_timeout=2.5,
        ov_config=(("NUM_STREAMS", "2"),),
    )
    path = tmp_path / "round.toml"
    path.write_text(config.to_toml())
    assert BatcherConfig.from_toml(path) == config
