"""The engine worker: the one thread that owns the Runner (and so the Engine and its log).

Requests put jobs on a queue; the worker takes whatever is queued, applies the writes (up to
``max_batch``) in order, group-commits them with one :meth:`Runner.flush`, and only then resolves
them, so nothing is acknowledged before it is durable. Writes go first: reads run when no write is
waiting (and at least one after each batch of writes, so a stream of writes cannot starve them), for a
slice of ``read_slice_s`` or until something new is queued; a heavy read delays a write by at most its
own length. A read sees every write queued before it (perhaps later ones too), all of them durable.
:class:`ReadFairness` keeps one key's reads from taking the engine thread from everyone else.

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
import contextvars
import dataclasses
import gc
import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fluidmargin.core.errors import ValidationError
from fluidmargin.engine.engine import Engine
from fluidmargin.model import events as ev
from fluidmargin.service.errors import IdempotencyMismatch, WorkerUnavailable
from fluidmargin.service.storage import IdempotencyIndex, fingerprint_digest
from fluidmargin.store.records import StoreUnavailable
from fluidmargin.store.runner import Runner

log = logging.getLogger("fluidmargin.service")
T = TypeVar("T")
Records = list[tuple[int, ev.Event]]
Build = Callable[[Engine, int], ev.Event]
CommitListener = Callable[[Records], None]


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
    owner: str | None = None  # the key id a read is charged to (read_owner)


_STOP = object()

read_owner: contextvars.ContextVar[str | None] = contextvars.ContextVar("fluidmargin_read_owner", default=None)
"""The id of the API key the current request runs for (set by the request guard): its reads' engine time
is charged to that key."""


class ReadFairness:
    """Per-key fairness for reads, so that one key's reads cannot starve everyone else.

    * ``in_flight``: at most this many GET requests of one key are served at once (:meth:`turn`, taken
      by the request guard before the app sees the request); the others wait in arrival order, costing
      nothing. 0: no cap.
    * ``share``: one key's reads may use, on average, at most this fraction of the engine thread's time.
      Each read's engine time is charged to its key (:meth:`charge`); a key in debt waits in
      :meth:`admit` before its next read is queued. Credit accrues at ``share`` seconds a second, up to
      ``burst_s``. 0: no budget.

    Writes are never held here (the worker runs them before any read).
    """

    def __init__(
        self, share: float = 0.25, burst_s: float = 0.5, in_flight: int = 2, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.share = share
        self.burst_s = burst_s
        self.in_flight = in_flight
        self._clock = clock
        self._credit: dict[str, tuple[float, float]] = {}  # key id -> (engine seconds of credit, as of)
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._lock = threading.Lock()  # charge() runs in the worker thread

    def _balance(self, key: str, now: float) -> float:
        credit, at = self._credit.get(key, (self.burst_s, now))
        return min(self.burst_s, credit + (now - at) * self.share)

    def charge(self, key: str, seconds: float) -> None:
        """Charge ``seconds`` of engine time to ``key`` (called in the worker thread)."""
        if self.share <= 0:
            return
        with self._lock:
            now = self._clock()
            self._credit[key] = (self._balance(key, now) - seconds, now)

    def debt_s(self, key: str) -> float:
        """How long ``key`` must wait before its next read may be queued (0: now)."""
        if self.share <= 0:
            return 0.0
        with self._lock:
            balance = self._balance(key, self._clock())
        return 0.0 if balance >= 0 else -balance / self.share

    async def admit(self, key: str) -> None:
        """Wait until ``key`` is out of debt."""
        while (wait := self.debt_s(key)) > 0:
            await asyncio.sleep(wait)

    @contextlib.asynccontextmanager
    async def turn(self, key: str) -> AsyncIterator[None]:
        """One of ``key``'s ``in_flight`` places for a GET request, held while it is served."""
        if self.in_flight <= 0:
            yield
            return
        sem = self._slots.get(key)
        if sem is None:
            sem = self._slots[key] = asyncio.Semaphore(self.in_flight)
        async with sem:
            yield


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
        fairness: ReadFairness | None = None,
        read_slice_s: float = 0.002,
    ) -> None:
        self.fairness = fairness
        self.read_slice_s = read_slice_s
        self._open_runner = open_runner
        self.gc_young_threshold = gc_young_threshold
        self._clock = clock
        self.max_batch = max_batch
        self.max_queued = max_queued
        self.snapshot_every = snapshot_every
        self._on_apply = on_apply
        self._on_flush = on_flush
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._writes: deque[_Job] = deque()  # taken from the queue, not yet run (worker thread only)
        self._reads: deque[_Job] = deque()
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
        """Start the thread and open (recover) the log in it; raises what opening raised. Once only:
        a second call (the app's lifespan, after ``serve`` started it) returns or raises as the first."""
        if self._thread is not None:
            if self._open_error is not None:
                raise self._open_error
            return
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

    def clock_ns(self) -> int:
        """The time an input applied now would at least be stamped with (no stamp is taken): for reads
        that judge time-dependent state, such as staleness, at the service's now."""
        eng_now = self.runner.engine.now_ns if self.runner is not None else 0
        return max(self._clock(), self._last_ts, eng_now)

    def add_commit_listener(self, fn: CommitListener) -> None:
        """Call ``fn(records)`` in the worker thread after each commit (records in seq order)."""
        self._listeners.append(fn)

    def queued(self) -> int:
        return self._q.qsize() + len(self._writes) + len(self._reads)

    # --- submitting -----------------------------------------------------------------------------

    def _check(self) -> None:
        if self._thread is None or self.runner is None:
            raise WorkerUnavailable("the engine worker is not running")
        if self.failed:
            raise WorkerUnavailable(f"the engine worker stopped: {self.failed}")
        if self.queued() >= self.max_queued:
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
        """Run ``fn(engine)`` in the worker once no write is waiting; it sees every write queued before it,
        durable. A request's read waits first while its key is over its share (:class:`ReadFairness`)."""
        owner = read_owner.get()
        if owner is not None and self.fairness is not None:
            await self.fairness.admit(owner)
        self._check()
        loop = asyncio.get_running_loop()
        job = _Job(fn, False, loop=loop, fut=loop.create_future(), owner=owner)
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
        writes, reads = self._writes, self._reads
        while True:
            block = stop is None and not writes and not reads
            while stop is None:  # take everything queued (waiting only when there is nothing to do)
                try:
                    item = self._q.get() if block else self._q.get_nowait()
                except queue.Empty:
                    break
                block = False
                if isinstance(item, tuple) and item and item[0] is _STOP:
                    stop = item  # what is queued after it is refused by _close
                else:
                    (writes if item.write else reads).append(item)
            if writes:
                self._run_batch([writes.popleft() for _ in range(min(len(writes), self.max_batch))])
            if reads:  # at least one after each batch of writes: a steady stream of writes cannot starve them
                self._run_reads(reads)
            elif not writes and stop is not None:
                break
        self._close(snapshot=stop[1])

    def _run_reads(self, reads: deque[_Job]) -> None:
        """Run queued reads for up to ``read_slice_s`` (at least one), or until something new is queued;
        every write applied so far is durable, so each is resolved at once."""
        runner = self.runner
        assert runner is not None
        done: list[_Job] = []
        deadline = time.perf_counter() + self.read_slice_s
        while reads:
            job = reads.popleft()
            t0 = time.perf_counter()
            try:
                job.result = job.fn(runner.engine)
            except Exception as e:
                job.error = e
            t1 = time.perf_counter()
            if job.owner is not None and self.fairness is not None:
                self.fairness.charge(job.owner, t1 - t0)
            done.append(job)
            if t1 >= deadline or not self._q.empty():
                break
        _resolve(done)

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
        if runner.stale and not self._reload(runner, batch):
            return
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
                job.error = WorkerUnavailable(str(e)) if isinstance(e, StoreUnavailable) else e
        if committed or written:
            try:
                t0 = time.perf_counter()
                self.durable_seq = runner.flush()
                if self._on_flush is not None:
                    self._on_flush(time.perf_counter() - t0)
                for job in written:
                    if job.error is None:
                        job.result.durable_seq = self.durable_seq
            except StoreUnavailable as e:  # retried for a while already; the engine is rebuilt once it is back
                log.warning("commit failed, the store is unavailable: %s", e)
                for job in batch:  # reads too: they saw writes that are now dropped
                    job.error = WorkerUnavailable(f"not acknowledged, not applied: {e}; retry (same Idempotency-Key)")
                committed = []
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

    def _reload(self, runner: Runner, batch: list[_Job]) -> bool:
        """Rebuild the engine from the log after a commit the store could not take (Runner.reload); while
        the store is still away the batch is answered 503 (False)."""
        try:
            found = runner.reload()
        except Exception as e:
            if not isinstance(e, StoreUnavailable):
                log.exception("rebuilding the engine from the log failed")
                self.failed = self.failed or f"rebuilding the engine from the log failed: {e!r}"
            for job in batch:
                job.error = WorkerUnavailable(f"the store is unavailable ({e}); retry later")
            _resolve(batch)
            return False
        self._idem.clear()  # outcomes of writes that were dropped
        self._indexed = []
        self.durable_seq = runner.durable_seq
        log.warning("the store is back: the engine was rebuilt from the log (seq %d)", self.durable_seq)
        if found:  # committed, though the commit's answer was lost: tell the listeners now
            for fn in self._listeners:
                try:
                    fn(found)
                except Exception:
                    log.exception("commit listener failed")
        if self._index is not None:
            try:
                self._index.catch_up(runner)
            except Exception:
                log.exception("idempotency index catch-up failed")
        return True

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
            if isinstance(e, ValidationError) and runner.failed is None:
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
