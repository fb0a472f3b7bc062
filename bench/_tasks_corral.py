"""The benchmark's task for corral's node workers (and Dask): it does nothing."""

from corral.tasks import task


@task(key="noop")
def noop(x: int = 0) -> int:
    """Return ``x``."""
    return x
