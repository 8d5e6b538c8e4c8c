"""A short soak: 20,000 requests with cancellations, bad samples, deadlines and faults.

The full run is ``python -m benchmarks.soak`` (a million requests); this one checks the same
invariants on every backend in a few seconds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    # Plain `pytest` (unlike `python -m pytest`) leaves the repository root off sys.path,
    # and `benchmarks` is not an installed package.
    sys.path.insert(0, _ROOT)

from benchmarks.soak import SoakConfig, run_soak  # noqa: E402

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def test_soak_invariants_hold(anyio_backend: str) -> None:
    config = SoakConfig(
        requests=20_000,
        seed=20240611,
        warmup_requests=2_000,
        profile_budget=0.3,
        # Fail instead of hanging the test run if the Batcher stops making progress.
        stall_seconds=30.0,
    )
    report = await run_soak(config)
    assert report.backend == anyio_backend
    assert report.passed, report.failures()
    assert sum(report.outcomes.values()) == config.requests
