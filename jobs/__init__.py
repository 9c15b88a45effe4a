"""Writing jobs: a job is an ``async def`` or plain ``def`` taking a :class:`JobContext`.

from jobs import JobContext

async def countdown(ctx: JobContext, steps: int = 10, delay: float = 0.1) -> dict:
    for i in range(steps):
        await ctx.checkpoint()            # a pause waits here; a cancel raises here
        await asyncio.sleep(delay)
        ctx.progress(100 * (i + 1) / steps)
    return {"steps": steps}
"""

from jobs.context import Agent, CancelRequested, JobContext
from jobs.lifecycle import JobState, JobStatus

__all__ = ["Agent", "CancelRequested", "JobContext", "JobState", "JobStatus"]
