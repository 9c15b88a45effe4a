"""Example jobs: ``countdown``, ``agents_pipeline``, ``fail``, ``resumable_sum`` (saves its
state) and a few for testing edges."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import ray

from jobs.context import JobContext


async def countdown(ctx: JobContext, steps: int = 10, delay: float = 0.1) -> dict[str, Any]:
    """Count ``steps`` steps of ``delay`` seconds, a checkpoint before each."""
    for i in range(steps):
        await ctx.checkpoint()  # a pause waits here; a cancel raises here
        await asyncio.sleep(delay)
        ctx.progress(100 * (i + 1) / steps, f"step {i + 1}/{steps}")
    return {"steps": steps}


def countdown_sync(ctx: JobContext, steps: int = 10, delay: float = 0.1) -> dict[str, Any]:
    """The same as a plain ``def``: it runs in a thread and checkpoints without ``await``."""
    for i in range(steps):
        ctx.checkpoint()
        time.sleep(delay)
        ctx.progress(100 * (i + 1) / steps, f"step {i + 1}/{steps}")
    return {"steps": steps}


async def resumable_sum(ctx: JobContext, steps: int = 10, delay: float = 0.1) -> dict[str, Any]:
    """Add up ``0 .. steps-1``, a step every ``delay`` seconds, saving after each: a run
    after a lost actor or a suspend goes on from the last save (``resumed_from`` says where,
    ``runs`` how many runs it took), and the total is right whatever happened."""
    state = ctx.restored or {"next": 0, "total": 0, "runs": 0}
    state = {**state, "runs": state["runs"] + 1}
    resumed_from = state["next"]
    for i in range(resumed_from, steps):
        await ctx.checkpoint()  # a pause waits here; a cancel or a suspend raises here
        await asyncio.sleep(delay)
        state = {**state, "next": i + 1, "total": state["total"] + i}
        await ctx.save(state)
        ctx.progress(100 * (i + 1) / steps, f"step {i + 1}/{steps}")
    return {"steps": steps, "total": state["total"], "resumed_from": resumed_from, **state}


@ray.remote(num_cpus=0.25)
def _research(topic: str, delay: float) -> str:
    """An agent's work done as a Ray task, on any node."""
    time.sleep(delay)
    words = topic.split()
    return f"notes on {topic}: " + ", ".join(f"{w} ({len(w)} letters)" for w in words)


async def agents_pipeline(
    ctx: JobContext, topic: str = "ray actors and websockets", delay: float = 0.3
) -> dict[str, Any]:
    """A planner, two researchers running as Ray tasks, and a writer, with output previews."""
    async with ctx.agent("planner") as planner:
        await ctx.checkpoint()
        await asyncio.sleep(delay)
        parts = [topic, f"{topic} in production"]
        planner.output(f"plan: research {len(parts)} angles: {parts}")
    ctx.progress(20, "planned")

    notes: list[str] = []
    agents = [ctx.agent(f"researcher-{i + 1}") for i in range(len(parts))]
    refs = []
    for agent, part in zip(agents, parts, strict=True):
        await agent.__aenter__()
        refs.append(ctx.task(_research, part, delay))
    for agent, ref in zip(agents, refs, strict=True):
        await ctx.checkpoint()
        try:
            note: str = await ref
        except BaseException as e:
            await agent.__aexit__(type(e), e, None)
            raise
        agent.output(note)
        notes.append(note)
        await agent.__aexit__(None, None, None)
        ctx.progress(20 + 60 * len(notes) / len(parts), f"{agent.name} done")

    async with ctx.agent("writer") as writer:
        await ctx.checkpoint()
        await asyncio.sleep(delay)
        summary = " | ".join(notes)
        writer.output(f"summary: {summary[:200]}")
    ctx.progress(100, "written")
    return {"topic": topic, "notes": notes}


async def fail(ctx: JobContext, after: int = 2, delay: float = 0.05) -> None:
    """Make some progress, then raise."""
    for i in range(after):
        await ctx.checkpoint()
        await asyncio.sleep(delay)
        ctx.progress(100 * (i + 1) / (after + 1))
    raise RuntimeError(f"failed on purpose after {after} steps")


async def spin(ctx: JobContext, seconds: float = 3600.0) -> str:
    """Busy without a single checkpoint or await: only a forced cancel stops it."""
    ctx.progress(1, "spinning")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass
    return "spun"


def spin_sync(ctx: JobContext, seconds: float = 3600.0) -> str:
    """A plain ``def`` that never checkpoints."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)
    return "spun"


async def emit_burst(
    ctx: JobContext, count: int = 1000, every: int = 1, rate: float | None = None
) -> int:
    """Emit ``count`` progress events, flat out or at ``rate`` per second (for load tests
    and benchmarks), with a checkpoint every ``every`` events."""
    started = time.monotonic()
    for i in range(count):
        if i % every == 0:
            await ctx.checkpoint()
            if rate:
                ahead = started + i / rate - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
        ctx.progress(100 * (i + 1) / count)
    return count
