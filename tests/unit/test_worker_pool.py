"""The warm pool's policy, driven with a made-up clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from control_plane.core.worker_pool import (
    FIRST_BACKOFF,
    PoolConfig,
    WorkerPool,
    WorkerStateError,
    cold_reason,
)
from jobs.actor import JobOptions


@dataclass
class Options:
    num_cpus: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)
    runtime_env: dict[str, Any] | None = None


def filled(pool: WorkerPool, now: float = 0.0) -> list[str]:
    """Start and ready as many workers as the pool asks for; their ids."""
    ids = [f"w{now:g}-{i}" for i in range(pool.to_start(now))]
    for worker_id in ids:
        pool.starting(worker_id, now)
        assert pool.ready(worker_id, now)
    return ids


def test_a_default_job_takes_the_pool() -> None:
    assert cold_reason(JobOptions(), PoolConfig()) is None


@pytest.mark.parametrize(
    "options",
    [
        Options(resources={"GPU": 1}),
        Options(runtime_env={"pip": ["requests"]}),
        Options(num_cpus=1),
        JobOptions(resources={"custom": 1}),
        JobOptions(runtime_env={"env_vars": {"A": "1"}}),
        JobOptions(num_cpus=0.5),
    ],
)
def test_jobs_needing_another_worker_go_cold(options: Any) -> None:
    assert cold_reason(options, PoolConfig()) is not None


def test_a_pool_made_with_cpus_takes_jobs_reserving_as_many() -> None:
    config = PoolConfig(num_cpus=1)
    assert cold_reason(Options(num_cpus=1), config) is None
    assert cold_reason(Options(), config) is not None


def test_a_new_pool_starts_its_size_and_no_more() -> None:
    pool = WorkerPool(PoolConfig(size=3), now=0.0)
    assert pool.to_start(0.0) == 3
    pool.starting("a", 0.0)
    assert pool.to_start(0.0) == 2  # a starting worker counts
    filled(pool)
    assert pool.to_start(0.0) == 0
    assert pool.stats(0.0)["idle"] == 2
    assert pool.stats(0.0)["starting"] == 1


def test_a_starting_worker_is_not_handed_out() -> None:
    pool = WorkerPool(PoolConfig(size=1), now=0.0)
    pool.starting("a", 0.0)
    assert pool.take(0.1) is None
    assert pool.misses == 1
    assert pool.ready("a", 0.2)
    assert pool.take(0.3) == "a"


def test_take_hands_out_the_oldest_idle_worker_once() -> None:
    pool = WorkerPool(PoolConfig(size=2), now=0.0)
    first, second = filled(pool)
    assert pool.take(1.0) == first
    assert pool.take(1.0) == second
    assert pool.take(1.0) is None
    assert (pool.hits, pool.misses) == (2, 1)


def test_a_worker_handed_out_never_comes_back() -> None:
    """Whatever its job did (failed, killed, completed), a taken worker is not the pool's:
    it cannot become idle again, and the refill makes new ones."""
    pool = WorkerPool(PoolConfig(size=1), now=0.0)
    [worker] = filled(pool)
    assert pool.take(1.0) == worker
    assert worker not in pool
    assert not pool.ready(worker, 2.0)  # a late "ready" does not put it back
    assert not pool.retire(worker)
    assert pool.to_start(1.0 + pool.config.refill_delay) == 1
    [fresh] = filled(pool, 2.0)
    assert fresh != worker
    assert pool.take(3.0) == fresh


def test_a_refill_waits_its_delay_from_the_first_take_not_made_up_for() -> None:
    pool = WorkerPool(PoolConfig(size=3, refill_delay=1.0), now=0.0)
    filled(pool)
    assert pool.take(10.0) is not None
    assert pool.to_start(10.5) == 0  # the job just handed out keeps the CPU
    assert pool.next_due(10.5) == 0.5
    assert pool.take(10.9) is not None  # a second take does not push the refill back
    assert pool.to_start(11.0) == 2
    assert pool.next_due(11.0) is None
    assert pool.take(12.0) is not None
    assert pool.to_start(12.0) == 0  # a new take, a new delay
    assert pool.to_start(13.0) == 3


def test_a_worker_id_is_started_once() -> None:
    pool = WorkerPool(PoolConfig(size=2), now=0.0)
    pool.starting("a", 0.0)
    with pytest.raises(WorkerStateError):
        pool.starting("a", 0.0)
    assert pool.ready("a", 0.0)
    with pytest.raises(WorkerStateError):
        pool.ready("a", 0.0)


def test_the_pool_shrinks_when_no_submit_comes_and_grows_back_on_the_next() -> None:
    config = PoolConfig(size=4, idle_after=60.0, idle_size=1)
    pool = WorkerPool(config, now=0.0)
    ids = filled(pool)
    assert pool.to_retire(59.0) == []
    retired = pool.to_retire(61.0)
    assert len(retired) == 3 and set(retired) <= set(ids)
    for worker_id in retired:
        assert pool.retire(worker_id)
    assert pool.stats(61.0)["idle"] == 1
    assert pool.to_start(61.0) == 0
    assert pool.take(62.0) is not None  # demand again
    assert pool.target(62.0) == 4
    assert pool.to_start(62.0 + config.refill_delay) == 4


def test_a_pool_of_idle_size_zero_empties_when_idle() -> None:
    pool = WorkerPool(PoolConfig(size=2, idle_after=10.0, idle_size=0), now=0.0)
    filled(pool)
    assert len(pool.to_retire(11.0)) == 2


def test_resize_to_zero_retires_idle_workers_and_starts_none() -> None:
    pool = WorkerPool(PoolConfig(size=2), now=0.0)
    filled(pool)
    pool.resize(0)
    assert len(pool.to_retire(1.0)) == 2
    assert pool.to_start(1.0) == 0
    pool.resize(3)
    assert pool.to_start(1.0) == 1  # the two idle ones still count until retired


def test_a_worker_not_ready_in_time_is_dropped() -> None:
    pool = WorkerPool(PoolConfig(size=1, ready_timeout=30.0), now=0.0)
    pool.starting("slow", 0.0)
    assert pool.to_retire(29.0) == []
    assert pool.to_retire(31.0) == ["slow"]
    assert pool.retire("slow")
    assert not pool.ready("slow", 32.0)


def test_failed_starts_back_off_and_a_success_resets_it() -> None:
    pool = WorkerPool(PoolConfig(size=1), now=0.0)
    pool.starting("a", 0.0)
    pool.start_failed("a", 0.0)
    assert pool.to_start(FIRST_BACKOFF / 2) == 0
    assert pool.to_start(FIRST_BACKOFF) == 1
    pool.starting("b", FIRST_BACKOFF)
    pool.start_failed("b", FIRST_BACKOFF)
    assert pool.to_start(FIRST_BACKOFF * 2) == 0  # twice as long after two in a row
    assert pool.to_start(FIRST_BACKOFF * 3) == 1
    pool.starting("c", 10.0)
    assert pool.ready("c", 10.0)
    assert pool.failed == 2


def test_drain_hands_back_every_worker_and_turns_the_pool_off() -> None:
    pool = WorkerPool(PoolConfig(size=2), now=0.0)
    ids = filled(pool)
    pool.starting("late", 0.0)
    assert sorted(pool.drain()) == sorted([*ids, "late"])
    assert pool.to_start(1.0) == 0
    assert not pool.ready("late", 1.0)
    assert pool.take(1.0) is None


def test_config_refuses_negative_sizes() -> None:
    with pytest.raises(ValueError):
        PoolConfig(size=-1)
    with pytest.raises(ValueError):
        PoolConfig(idle_after=0)
