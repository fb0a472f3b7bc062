"""A node's task worker slots: one worker process per slot, fed over pipes.

Theory of operation: the pool starts ``slots`` worker processes (:mod:`corral.node.worker_main`)
that import the node's task modules and say which keys they found. After every join it tells
the controller (``TaskHello``): the keys, the slots, the node's labels, the leases it still
holds and the results the controller has not acknowledged. Runs arrive in batches
(``TaskAssign``); each goes to the worker with the shortest queue, written into its pipe at
once so the worker never waits for a round trip. Progress and results go back in batches
(``TaskReport``); a result is kept and re-sent until the controller acknowledges it, so a
controller restart loses none. A stop is passed to the worker (the task's flag); a forced
stop of the task a worker is running kills that process, and the pool starts a new one and
hands it the runs that were waiting behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

import msgspec

from corral import bus, procs, subjects, wire
from corral.errors import ConfigError, CorralError
from corral.node.epochs import EpochFilter
from corral.node.map_asks import MAP_REASK, MapAsks
from corral.node.worker_main import frame
from corral.states import TaskOutcome

__all__ = ["ENTRY_POINTS", "WorkerPool", "task_modules"]

#: Installed packages name their task modules in this entry-point group::
#:
#:     [project.entry-points."corral.tasks"]
#:     imaging = "mypkg.imaging_tasks"
ENTRY_POINTS = "corral.tasks"

log = logging.getLogger("corral.node.workers")

_HEADER = struct.Struct(">I")
_decode = msgspec.msgpack.Decoder().decode
_RESEND_AFTER = 1.0
#: Most seconds between a worker taking up a run and the node saying so
STARTED_WITHIN = 0.05


def task_modules(explicit: tuple[str, ...]) -> tuple[str, ...]:
    """The modules a node's workers load: those given (``--tasks``), then those installed
    packages name in the ``corral.tasks`` entry-point group, without repeats."""
    return tuple(dict.fromkeys([*explicit, *_installed(tuple(sys.path))]))


@functools.lru_cache(maxsize=4)
def _installed(path: tuple[str, ...]) -> tuple[str, ...]:
    """The modules the ``corral.tasks`` entry points on ``path`` name (``sys.path``, as a
    cache key). Reading every installed package's metadata costs ~8 ms: a process hosting a
    hundred nodes paid it a hundred times during its join (issue #14)."""
    from importlib.metadata import entry_points

    return tuple(ep.value.split(":")[0] for ep in entry_points(group=ENTRY_POINTS))


def _signatures(data: Any) -> dict[str, wire.TaskSignature]:
    """The signatures a worker described, as the wire carries them (none if malformed)."""
    try:
        return msgspec.convert(data, dict[str, wire.TaskSignature])
    except msgspec.ValidationError:
        return {}


class _Worker:
    """One worker process and the runs written to it, oldest (the running one) first."""

    def __init__(self, index: int, proc: asyncio.subprocess.Process) -> None:
        self.index = index
        self.proc = proc
        self.pending: dict[str, list[Any]] = {}
        self.killing: str | None = None
        #: who killed it on purpose (``kill_worker``), for the failed task's error
        self.killed_by = ""
        #: its running task waits for a map (the worker takes no new runs meanwhile)
        self.blocked = False
        #: the process exited; its runs wait for its replacement
        self.dead = False
        self.reader: asyncio.Task[None] | None = None
        #: the lease last reported started (the first of ``pending`` runs, the rest wait)
        self.started: str | None = None

    def __repr__(self) -> str:
        return f"<Worker {self.index} pid={self.proc.pid} pending={len(self.pending)}>"

    def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(ConnectionError, RuntimeError):
            self.proc.stdin.write(data)


class WorkerPool:
    """The task workers of one node.

    Args:
        name: The node's name.
        instance: The node process's instance id (sent in every hello).
        labels: The node's labels (tasks may ask for some).
        nc: The node's bus connection.
        task_log_limit: Bytes of a task's log kept (``CORRAL_TASK_LOG_LIMIT`` of the workers).
        joined: Set while the node is joined to a controller.
        joins: How many times the node has joined so far.
        join_changed: Notified whenever the node joins (and here, when asked for a hello).
        modules: Task modules every worker imports.
        slots: Worker processes to run.
        epochs: The node's leader epochs: task messages of a deposed leader are ignored.
    """

    def __init__(
        self,
        *,
        name: str,
        instance: str,
        labels: tuple[str, ...],
        nc: bus.NATS,
        task_log_limit: int,
        joined: asyncio.Event,
        joins: Callable[[], int],
        join_changed: asyncio.Condition,
        modules: tuple[str, ...],
        slots: int,
        epochs: EpochFilter | None = None,
    ) -> None:
        self.epochs = epochs
        self.name = name
        self.instance = instance
        self.labels = labels
        self.nc = nc
        self.task_log_limit = task_log_limit
        self.joined = joined
        self.joins = joins
        self.join_changed = join_changed
        self.modules = modules
        self.slots = max(1, slots)
        self.keys: list[str] = []
        self.subtasks: list[str] = []
        self.signatures: dict[str, wire.TaskSignature] = {}
        self.workers: list[_Worker] = []
        self._where: dict[str, _Worker] = {}  # lease -> worker
        self._unacked: dict[str, tuple[float, wire.TaskResult]] = {}
        self._progress: list[wire.TaskProgress] = []
        self._results: list[wire.TaskResult] = []
        #: (lease, worker, monotonic time) of runs workers took up, not reported yet
        self._started: list[tuple[str, int, float]] = []
        self._started_due: asyncio.TimerHandle | None = None
        self._flush = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._resync = 0  # hellos the controller asked for
        #: the maps of its tasks that wait for their answers
        self.maps = MapAsks(name, lambda: self.nc)

    def __repr__(self) -> str:
        busy = sum(1 for w in self.workers if w.pending)
        return f"<WorkerPool {self.name} slots={self.slots} busy={busy} keys={len(self.keys)}>"

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker processes and wait until they have imported the modules.

        Raises:
            ConfigError: a task module cannot be imported (the worker's error says why).
        """
        self.workers = list(await asyncio.gather(*(self._spawn(i) for i in range(self.slots))))
        await self.nc.subscribe(subjects.node_tasks(self.name), cb=self._on_message)
        self._tasks = [
            asyncio.create_task(self._hello_loop(), name="tasks-hello"),
            asyncio.create_task(self._flush_loop(), name="tasks-flush"),
            asyncio.create_task(self._resend_loop(), name="tasks-resend"),
        ]
        log.info(
            "task workers ready",
            extra={"node": self.name, "slots": self.slots, "keys": len(self.keys)},
        )

    async def _spawn(self, index: int) -> _Worker:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
            "CORRAL_TASK_LOG_LIMIT": str(self.task_log_limit),
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "corral.node.worker_main",
            *self.modules,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            preexec_fn=procs.die_with_parent,
        )
        first = await self._read(proc)
        if first is None or first[0] != "ready":
            await proc.wait()
            why = first[1] if first else f"it exited with status {proc.returncode}"
            raise ConfigError(f"node {self.name}: task worker failed to start: {why}")
        self.keys, self.subtasks = list(first[1]), list(first[3])
        if len(first) > 4:  # each key's parameters (the controller checks queued arguments)
            self.signatures = _signatures(first[4])
        worker = _Worker(index, proc)
        worker.reader = asyncio.create_task(self._read_loop(worker), name=f"worker-{index}")
        return worker

    async def stop(self) -> None:
        """Stop every worker process (a running task is killed) and the pool's loops."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for worker in self.workers:
            if worker.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(signal.SIGKILL)
        for worker in self.workers:
            await worker.proc.wait()
            if worker.reader is not None:
                worker.reader.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- pipes --------------------------------------------------------------------------

    @staticmethod
    async def _read(proc: asyncio.subprocess.Process) -> list[Any] | None:
        assert proc.stdout is not None
        try:
            header = await proc.stdout.readexactly(4)
            body = await proc.stdout.readexactly(_HEADER.unpack(header)[0])
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        return list(_decode(body))

    async def _read_loop(self, worker: _Worker) -> None:
        while (message := await self._read(worker.proc)) is not None:
            kind = message[0]
            if kind == "done":
                _, lease, outcome, result, error, tb = message[:6]
                logs = str(message[6]) if len(message) > 6 else ""
                took = float(message[7]) if len(message) > 7 else -1.0
                worker.pending.pop(lease, None)
                self._where.pop(lease, None)
                self.maps.forget(lease)
                self._result(
                    wire.TaskResult(lease, outcome, result, error, tb, worker.index, logs, took)
                )
                self._note_start(worker)
            elif kind == "map":
                request = wire.TaskMap(
                    lease=message[1], key=message[2], args=message[3], seq=message[4]
                )
                await self._map(worker, request)
            elif kind == "progress":
                self._progress.append(
                    wire.TaskProgress(message[1], message[2], message[3], worker.index)
                )
                self._flush.set()
        await self._worker_died(worker)

    async def _map(self, worker: _Worker, request: wire.TaskMap) -> None:
        """A task maps a subtask: lend its slot (a spare worker if all are blocked), then ask
        the controller to queue the items."""
        worker.blocked = True
        if all(w.blocked for w in self.workers):
            try:
                spare = await self._spawn(len(self.workers))
            except CorralError as exc:
                log.error("cannot start a spare worker for a map: %s", exc)
            else:
                self.workers.append(spare)
        await self.maps.ask(request, functools.partial(self._answer, worker))

    @staticmethod
    def _answer(worker: _Worker, mapped: list[Any]) -> None:
        worker.blocked = False
        worker.write(frame(["mapped", *mapped]))

    def _note_start(self, worker: _Worker) -> None:
        """Report the run ``worker`` works on now, if it is new: a worker runs its pipe's
        runs in order, so the first still pending is the one it started."""
        first = next(iter(worker.pending), None)
        if first is not None and first != worker.started and not worker.dead:
            worker.started = first
            self._started.append((first, worker.index, time.monotonic()))
            # Said with the next report, or within STARTED_WITHIN: a short task's start and
            # result go in one report (one message and one write at the controller).
            if self._started_due is None:
                loop = asyncio.get_running_loop()
                self._started_due = loop.call_later(STARTED_WITHIN, self._flush.set)

    def _result(self, result: wire.TaskResult) -> None:
        self._unacked[result.lease] = (time.monotonic(), result)
        self._results.append(result)
        self._flush.set()

    async def _worker_died(self, worker: _Worker) -> None:
        worker.dead = True  # no new runs for it; those it holds go to its replacement
        code = await worker.proc.wait()
        if self._stopping:
            return
        if worker.pending:  # the oldest was running; it dies with the process
            running = next(iter(worker.pending))
            del worker.pending[running]
            self._where.pop(running, None)
            self.maps.forget(running)
            if worker.killing == running:
                self._result(
                    wire.TaskResult(
                        running,
                        TaskOutcome.STOPPED,
                        None,
                        "killed after the grace period (forced cancel)",
                        "",
                        worker.index,
                    )
                )
            else:
                why = (
                    f"its worker (slot {worker.index}) was killed by {worker.killed_by}"
                    if worker.killed_by
                    else f"its worker process died (exit status {code}) while running it"
                )
                self._result(
                    wire.TaskResult(
                        running,
                        TaskOutcome.FAILED,
                        None,
                        why,
                        "",
                        worker.index,
                    )
                )
        log.warning(
            "task worker exited; starting another",
            extra={"node": self.name, "worker": worker.index, "status": code},
        )
        try:
            fresh = await self._spawn(worker.index)
        except CorralError as exc:
            log.error("cannot restart a task worker: %s", exc)
            return
        self.workers[worker.index] = fresh
        # The runs that waited behind, and any given to it while its successor started.
        for lease, run in worker.pending.items():
            fresh.pending[lease] = run
            self._where[lease] = fresh
            fresh.write(frame(run))
        self._note_start(fresh)

    # --- bus ----------------------------------------------------------------------------

    async def _on_message(self, msg: Any) -> None:
        try:
            body: Any = wire.decode(msg.data, wire.NodeTaskMessage, msg.headers)  # type: ignore[arg-type]
        except CorralError as exc:
            log.warning("bad task message ignored: %s", exc)
            return
        if self.epochs is not None and not self.epochs.accept(
            wire.epoch_of(msg.headers), "task message"
        ):
            return
        if isinstance(body, wire.TaskAssign):
            self._assign(body.runs)
        elif isinstance(body, wire.TaskStop):
            self._stop(body.lease, body.force)
        elif isinstance(body, wire.TaskMapped):
            self.maps.mapped(body)
        elif isinstance(body, wire.TaskKillWorker):
            self._kill(body.slot, body.actor)
        elif isinstance(body, wire.TaskResync):
            self._resync += 1
            async with self.join_changed:
                self.join_changed.notify_all()
        else:
            for lease in body.leases:
                self._unacked.pop(lease, None)

    def _assign(self, runs: list[wire.TaskRun]) -> None:
        batches: dict[int, list[bytes]] = {}
        for run in runs:
            if run.lease in self._where:
                continue  # a repeat
            worker = min(self.workers, key=lambda w: (w.dead, w.blocked, len(w.pending)))
            message = ["run", run.lease, run.id, run.key, run.args, run.attempt]
            worker.pending[run.lease] = message
            self._where[run.lease] = worker
            batches.setdefault(worker.index, []).append(frame(message))
        for index, frames in batches.items():
            self.workers[index].write(b"".join(frames))
            self._note_start(self.workers[index])

    def _stop(self, lease: str, force: bool) -> None:
        worker = self._where.get(lease)
        if worker is None:
            return  # already finished
        if force and next(iter(worker.pending)) == lease:
            log.info("killing a task worker (forced cancel)", extra={"lease": lease})
            worker.killing = lease
            with contextlib.suppress(ProcessLookupError):
                worker.proc.send_signal(signal.SIGKILL)
            return
        worker.write(frame(["stop", lease]))

    def _kill(self, slot: int, actor: str) -> None:
        """Kill the worker process of ``slot`` (an operator asked); it is restarted."""
        if not 0 <= slot < len(self.workers) or self.workers[slot].dead:
            return
        worker = self.workers[slot]
        log.warning(
            "killing a task worker (kill_worker)",
            extra={"node": self.name, "worker": slot, "actor": actor},
        )
        worker.killed_by = actor or "an operator"
        with contextlib.suppress(ProcessLookupError):
            worker.proc.send_signal(signal.SIGKILL)

    async def _flush_loop(self) -> None:
        subject = subjects.node_in(self.name, subjects.TASK_REPORT_VERB)
        while True:
            await self._flush.wait()
            self._flush.clear()
            progress, self._progress = self._progress, []
            results, self._results = self._results, []
            now = time.monotonic()
            started = [wire.TaskStarted(lease, w, now - at) for lease, w, at in self._started]
            self._started = []
            if self._started_due is not None:
                self._started_due.cancel()
                self._started_due = None
            nc = self.nc
            if not nc.is_connected or not self.joined.is_set():
                continue  # results stay unacked and are re-sent
            # Results carry logs (up to task_log_limit each): split a big batch so that no
            # report outgrows the bus's max_payload (it would never be sent, nor acked).
            budget = max(64 * 1024, nc.max_payload // 2)
            for batch in _batches(results, budget):
                report = wire.TaskReport(progress=progress, results=batch, started=started)
                progress, started = [], []
                with contextlib.suppress(Exception):
                    await nc.publish(subject, wire.encode(report), headers=wire.HEADERS)

    async def _resend_loop(self) -> None:
        asked = time.monotonic()
        while True:
            await asyncio.sleep(_RESEND_AFTER)
            now = time.monotonic()
            if now - asked >= MAP_REASK and self.joined.is_set():
                asked = now
                self.maps.reask()
            due = [r for at, r in self._unacked.values() if now - at >= _RESEND_AFTER]
            if due:
                self._results.extend(due)
                self._flush.set()

    def _rejoined(self, said: int) -> Callable[[], bool]:
        return lambda: self.joined.is_set() and self.joins() + self._resync != said

    async def _hello_loop(self) -> None:
        """Say hello after every join (a new or restarted controller must learn our workers)."""
        said = -1
        cond = self.join_changed
        while True:
            async with cond:
                await cond.wait_for(self._rejoined(said))
            joins = self.joins() + self._resync
            hello = wire.TaskHello(
                instance=self.instance,
                keys=self.keys,
                slots=self.slots,
                labels=list(self.labels),
                running=list(self._where),
                results=[r for _, r in self._unacked.values()],
                subtasks=self.subtasks,
                signatures=self.signatures,
            )
            nc = self.nc
            subject = subjects.node_in(self.name, subjects.TASK_HELLO_VERB)
            try:
                reply = await nc.request(
                    subject, wire.encode(hello), timeout=5.0, headers=wire.HEADERS
                )
                wire.decode_reply(reply.data, wire.Ok, reply.headers)
            except Exception as exc:  # no responders yet, timeout: try again shortly
                log.info("task hello not answered (%s); retrying", type(exc).__name__)
                await asyncio.sleep(0.5)
                continue
            said = joins
            self.maps.reask()  # a new controller (a restart, a takeover) may not know our maps


def _batches(results: list[wire.TaskResult], budget: int) -> list[list[wire.TaskResult]]:
    """``results`` in runs of at most ``budget`` bytes of results and logs (one at least;
    one empty run when there are none, so progress alone is still sent)."""
    batches: list[list[wire.TaskResult]] = [[]]
    size = 0
    for r in results:
        weight = len(r.result or b"") + len(r.logs) + len(r.error) + len(r.traceback)
        if batches[-1] and size + weight > budget:
            batches.append([])
            size = 0
        batches[-1].append(r)
        size += weight
    return batches
