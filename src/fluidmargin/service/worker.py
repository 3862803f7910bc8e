"""The engine worker: the one thread that owns the Runner (and so the Engine and its log).

Requests put jobs on a queue; the worker takes whatever is queued (up to ``max_batch``), applies
the writes in order, group-commits them with one :meth:`Runner.flush`, and only then resolves every
job of the batch, reads included, so nothing is acknowledged (or shown) before it is durable.
Reads run in queue order between the writes, so each sees the state as of its place in the stream.

The service, not the engine, reads the clock: each input is stamped here, at apply time, with
``max(wall clock, last stamp + 1, engine time)``, strictly increasing. An ``event_id`` (the
``Idempotency-Key``) makes a write idempotent: a replay returns the first outcome, applies nothing.
Recent outcomes are cached in memory; older ones (and all after a restart) are found through the
idempotency index in the log's store (:class:`~fluidmargin.service.storage.IdempotencyIndex`), which
also keeps each request's fingerprint, so a key reused for another request is refused after a restart.

Opening the log (in the worker thread) restores the newest valid snapshot and replays the log's tail;
what it found is in :attr:`EngineWorker.recovery` (and the log, ``fluidmargin.service``). The worker
raises the process's young-generation GC threshold (``gc_young_threshold``): with the default one,
full collections over the large heap stall every request for ~100 ms every few seconds under load.

After each commit the batch's records are handed to every commit listener (in the worker thread,
in seq order): the hook streams and metrics hang on. A listener must be quick and must not block;
to reach an event loop it hands over with ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import gc
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fluidmargin.core.errors import FluidMarginError, ValidationError
from fluidmargin.engine.engine import Engine
from fluidmargin.model import events as ev
from fluidmargin.service.storage import IdempotencyIndex, fingerprint_digest
from fluidmargin.store.runner import Runner

log = logging.getLogger("fluidmargin.service")
T = TypeVar("T")
Records = list[tuple[int, ev.Event]]
Build = Callable[[Engine, int], ev.Event]
CommitListener = Callable[[Records], None]


class WorkerUnavailable(FluidMarginError):
    """The worker is stopped, failed, or has too much queued: answer 503."""


class IdempotencyMismatch(ValidationError):
    """An Idempotency-Key reused for a different request."""


@dataclass(slots=True)
class Outcome:
    """What one write did: its records (input first), and the durable seq once committed."""

    records: Records
    replayed: bool = False
    durable_seq: int = 0

    @property
    def seq(self) -> int:
        return self.records[0][0] if self.records else 0

    @property
    def event(self) -> ev.Event | None:
        return self.records[0][1] if self.records else None

    @property
    def rejection(self) -> str | None:
        for _seq, e in self.records[1:]:
            if isinstance(e, ev.InputRejected):
                return e.reason
        return None


@dataclass(slots=True)
class _Job:
    fn: Callable[..., Any]
    write: bool
    event_id: str = ""
    fingerprint: Any = None
    loop: asyncio.AbstractEventLoop | None = None
    fut: Any = None  # an asyncio.Future (with loop) or a concurrent.futures.Future
    result: Any = None
    error: BaseException | None = None
    timing: list[float] = field(default_factory=list)


_STOP = object()


class EngineWorker:
    """Owns the Runner in its own thread; see the module docstring."""

    def __init__(
        self,
        open_runner: Callable[[], Runner],
        clock: Callable[[], int] = time.time_ns,
        max_batch: int = 4096,
        max_queued: int = 100_000,
        idempotency_cache: int = 100_000,
        snapshot_every: int = 0,
        on_apply: Callable[[str, float], None] | None = None,
        on_flush: Callable[[float], None] | None = None,
        gc_young_threshold: int = 50_000,
    ) -> None:
        self._open_runner = open_runner
        self.gc_young_threshold = gc_young_threshold
        self._clock = clock
        self.max_batch = max_batch
        self.max_queued = max_queued
        self.snapshot_every = snapshot_every
        self._on_apply = on_apply
        self._on_flush = on_flush
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._open_error: BaseException | None = None
        self._listeners: list[CommitListener] = []
        self._idem: OrderedDict[str, tuple[str | None, Outcome]] = OrderedDict()
        self._idem_max = idempotency_cache
        self._index: IdempotencyIndex | None = None
        self._indexed: list[tuple[str, str | None, int]] = []  # keyed writes of the batch, for the index
        self.recovery: dict[str, Any] = {}  # what opening the log found (seq, snapshot, state hash, seconds)
        self._last_ts = 0
        self._last_snapshot_seq = 0
        self.runner: Runner | None = None
        self.failed: str | None = None
        self.durable_seq = 0

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self, timeout: float = 600.0) -> None:
        """Start the thread and open (recover) the log in it; raises what opening raised."""
        if self.gc_young_threshold:
            # a young collection every 700 allocations (the default) soon promotes the request path's
            # garbage-free churn into full collections over the whole heap (the engine, the caches):
            # stalls of ~100 ms every few seconds under load. Process-wide, and only ever raised.
            t0, t1, t2 = gc.get_threshold()
            if 0 < t0 < self.gc_young_threshold:
                gc.set_threshold(self.gc_young_threshold, max(t1, 50), max(t2, 100))
        self._thread = threading.Thread(target=self._main, name="fluidmargin-engine", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise WorkerUnavailable("the engine worker did not start in time")
        if self._open_error is not None:
            raise self._open_error

    def stop(self, snapshot: bool = False) -> None:
        """Drain the queue, commit, optionally snapshot, close the log and end the thread."""
        if self._thread is None:
            return
        self._q.put((_STOP, snapshot))
        self._thread.join()
        self._thread = None

    @property
    def engine(self) -> Engine:
        """The engine: touch it only from the worker thread (through :meth:`read` or :meth:`call`)."""
        assert self.runner is not None
        return self.runner.engine

    def add_commit_listener(self, fn: CommitListener) -> None:
        """Call ``fn(records)`` in the worker thread after each commit (records in seq order)."""
        self._listeners.append(fn)

    def queued(self) -> int:
        return self._q.qsize()

    # --- submitting -----------------------------------------------------------------------------

    def _check(self) -> None:
        if self._thread is None or self.runner is None:
            raise WorkerUnavailable("the engine worker is not running")
        if self.failed:
            raise WorkerUnavailable(f"the engine worker stopped: {self.failed}")
        if self._q.qsize() >= self.max_queued:
            raise WorkerUnavailable("too many requests queued; retry later")

    async def write(self, build: Build, event_id: str = "", fingerprint: Any = None) -> Outcome:
        """Apply the input ``build(engine, ts_ns)`` makes; resolves once it is durable.

        ``build`` runs in the worker with the engine as of the write's turn; an exception it raises
        (a 404, a 422) is the request's answer and nothing is applied.
        """
        self._check()
        loop = asyncio.get_running_loop()
        job = _Job(build, True, event_id, fingerprint, loop, loop.create_future())
        self._q.put(job)
        out: Outcome = await job.fut
        return out

    async def read(self, fn: Callable[[Engine], T]) -> T:
        """Run ``fn(engine)`` in the worker, in queue order; resolves after the batch's commit."""
        self._check()
        loop = asyncio.get_running_loop()
        job = _Job(fn, False, loop=loop, fut=loop.create_future())
        self._q.put(job)
        out: T = await job.fut
        return out

    def call(self, fn: Callable[[Engine], T], timeout: float | None = 60.0) -> T:
        """:meth:`read` for a caller outside any event loop (tests, tools): blocks until done."""
        self._check()
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._q.put(_Job(fn, False, fut=fut))
        return fut.result(timeout)

    # --- the thread -----------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            t0 = time.perf_counter()
            self.runner = runner = self._open_runner()
            eng = runner.engine
            self._last_ts = eng.now_ns
            self.durable_seq = runner.durable_seq
            self._last_snapshot_seq = eng.seq
            self.recovery = {
                "seq": eng.seq,
                "snapshot_seq": runner.restored_seq,
                "replayed": eng.seq - (runner.restored_seq or 0),
                "skipped_snapshots": list(runner.skipped_snapshots),
                "seconds": round(time.perf_counter() - t0, 3),
            }
            for why in runner.skipped_snapshots:
                log.warning("snapshot skipped: %s", why)
            log.info("engine recovered: %s", self.recovery)
        except BaseException as e:
            self._open_error = e
            self._ready.set()
            return
        try:
            self._index = IdempotencyIndex.for_runner(runner)
            if self._index is not None:
                self._index.catch_up(runner)
        except Exception:
            log.exception("the idempotency index is unavailable; replays after a restart scan the log")
            self._close_index()
        self._ready.set()
        stop: tuple[Any, bool] | None = None
        while stop is None:
            item = self._q.get()
            batch: list[_Job] = []
            while True:
                if isinstance(item, tuple) and item and item[0] is _STOP:
                    stop = item
                    break
                batch.append(item)
                if len(batch) >= self.max_batch:
                    break
                try:
                    item = self._q.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._run_batch(batch)
        self._close(snapshot=stop[1])

    def _close_index(self) -> None:
        if self._index is not None:
            with contextlib.suppress(Exception):
                self._index.close()
            self._index = None

    def _close(self, snapshot: bool) -> None:
        assert self.runner is not None
        try:
            if snapshot and self.failed is None and self.runner.snapshot_dir is not None:
                self.runner.snapshot()
        finally:
            self.runner.close()
            self._close_index()
            # anything that arrived after the stop is refused
            while True:
                try:
                    item = self._q.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, _Job):
                    item.error = WorkerUnavailable("the service is shutting down")
                    _resolve([item])

    def _run_batch(self, batch: list[_Job]) -> None:
        runner = self.runner
        assert runner is not None
        committed: Records = []
        written: list[_Job] = []
        for job in batch:
            try:
                if job.write:
                    job.result = self._write(job, committed)
                    written.append(job)
                else:
                    job.result = job.fn(runner.engine)
            except Exception as e:
                job.error = e
        if committed or written:
            try:
                t0 = time.perf_counter()
                self.durable_seq = runner.flush()
                if self._on_flush is not None:
                    self._on_flush(time.perf_counter() - t0)
                for job in written:
                    if job.error is None:
                        job.result.durable_seq = self.durable_seq
            except Exception as e:
                log.exception("commit failed")
                self.failed = self.failed or f"commit failed: {e!r}"
                for job in written:
                    job.error = WorkerUnavailable(f"not acknowledged: the commit failed ({e!r})")
                committed = []
        _resolve(batch)
        if self._indexed:
            rows, self._indexed = self._indexed, []
            if committed and self._index is not None:
                try:
                    self._index.add(rows)
                except Exception:  # rebuilt from the log on the next start
                    log.exception("idempotency index write failed")
        if committed:
            for fn in self._listeners:
                try:
                    fn(committed)
                except Exception:
                    log.exception("commit listener failed")
            self._maybe_snapshot()

    def _write(self, job: _Job, committed: Records) -> Outcome:
        runner = self.runner
        assert runner is not None
        eng = runner.engine
        if self.failed:
            raise WorkerUnavailable(f"the engine worker stopped: {self.failed}")
        eid = job.event_id
        digest = None
        if eid:
            digest = fingerprint_digest(job.fingerprint)
            cached = self._idem.get(eid)
            if cached is not None:
                if digest is not None and cached[0] is not None and cached[0] != digest:
                    raise IdempotencyMismatch("this Idempotency-Key was used for a different request")
                self._idem.move_to_end(eid)
                return dataclasses.replace(cached[1], replayed=True)
            if eid in eng.seen_ids:
                return self._replay_from_log(eid, digest)
        ts = max(self._clock(), self._last_ts + 1, eng.now_ns)
        event = job.fn(eng, ts)
        if eid:
            event = dataclasses.replace(event, event_id=eid)
        t0 = time.perf_counter()
        try:
            records = runner.submit(event)
        except Exception as e:
            if isinstance(e, ValidationError) and getattr(runner, "_failed", None) is None:
                raise  # refused before the engine saw it (it cannot be logged faithfully)
            # the engine stopped half-way: this batch's earlier writes are lost with it (the commit fails)
            self.failed = f"engine error: {e!r}"
            log.exception("engine error; the worker refuses further writes")
            raise WorkerUnavailable(self.failed) from e
        if self._on_apply is not None:
            self._on_apply(type(event).__name__, time.perf_counter() - t0)
        self._last_ts = ts
        committed.extend(records)
        out = Outcome(records)
        if eid:
            self._remember(eid, digest, out)
            if records:
                self._indexed.append((eid, digest, records[0][0]))
        return out

    def _remember(self, eid: str, digest: str | None, out: Outcome) -> None:
        self._idem[eid] = (digest, out)
        if len(self._idem) > self._idem_max:
            self._idem.popitem(last=False)

    def _replay_from_log(self, eid: str, digest: str | None) -> Outcome:
        """The first outcome of an id the cache no longer holds (evicted, or written before a restart)."""
        found = None
        if self._index is not None:
            try:
                found = self._index.get(eid)
            except Exception:
                log.exception("idempotency index read failed")
        stored: str | None = None  # the first request's fingerprint, when the index has it
        if found is not None:
            stored, seq = found
            if digest is not None and stored is not None and stored != digest:
                raise IdempotencyMismatch("this Idempotency-Key was used for a different request")
            records = self._records_at(seq, eid)
        else:
            records = self._records_of(eid)
            if records and self._index is not None:
                try:  # index it (the log has the id, not the request: no fingerprint)
                    self._index.add([(eid, None, records[0][0])])
                except Exception:
                    log.exception("idempotency index write failed")
        out = Outcome(records, replayed=True, durable_seq=self.durable_seq)
        self._remember(eid, stored, dataclasses.replace(out, replayed=False))
        return out

    def _records_at(self, seq: int, eid: str) -> Records:
        """The records of the input at ``seq`` (its own, then the outputs it caused, up to the next input)."""
        runner = self.runner
        assert runner is not None
        out: Records = []
        for s, e in runner.log.read(seq):
            if out and e.is_input:
                break
            if not out and (not e.is_input or getattr(e, "event_id", "") != eid):
                return self._records_of(eid)  # the index disagrees with the log: trust the log
            out.append((s, e))
        return out

    def _records_of(self, eid: str) -> Records:
        """The records of the input with ``event_id`` ``eid``, from the log (after a restart or eviction).

        A scan of the log: slow on a long log, and only taken for a replay the cache no longer holds.
        """
        runner = self.runner
        assert runner is not None
        out: Records = []
        for seq, e in runner.log.read():
            if out:
                if e.is_input:
                    break
                out.append((seq, e))
            elif e.is_input and getattr(e, "event_id", "") == eid:
                out.append((seq, e))
        return out

    def _maybe_snapshot(self) -> None:
        runner = self.runner
        assert runner is not None
        if not self.snapshot_every or runner.snapshot_dir is None:
            return
        if runner.engine.seq - self._last_snapshot_seq >= self.snapshot_every:
            try:
                runner.snapshot()
                self._last_snapshot_seq = runner.engine.seq
            except Exception:
                log.exception("snapshot failed")


def _resolve(jobs: list[_Job]) -> None:
    """Resolve every job: asyncio futures in one hand-over per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Job]] = {}
    for job in jobs:
        if job.loop is None:
            if job.fut is not None and not job.fut.done():
                if job.error is not None:
                    job.fut.set_exception(job.error)
                else:
                    job.fut.set_result(job.result)
        else:
            by_loop.setdefault(job.loop, []).append(job)
    for loop, js in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            loop.call_soon_threadsafe(_set_all, js)


def _set_all(jobs: list[_Job]) -> None:
    for job in jobs:
        if job.fut.done():  # the client went away
            continue
        if job.error is not None:
            job.fut.set_exception(job.error)
        else:
            job.fut.set_result(job.result)
