"""Tasks as a user migrating from Pydra writes them (tests/test_seed_pydra.py)."""

from __future__ import annotations

from corral.tasks import TaskContext, task


@task(key="MyTask")
def my_task(foo: str, count: int = 1) -> str:
    """The seed's ``controller.run_tasks('MyTask', foo='bar')``: ``foo`` repeated."""
    return foo * count


@task(key="Weigh")
def weigh(ctx: TaskContext, items: list[float], unit: str = "kg", *, scale: float = 1.0) -> str:
    """Takes the worker's context, a list and a keyword-only argument."""
    return f"{sum(items) * scale:g} {unit} (task {ctx.id})"
