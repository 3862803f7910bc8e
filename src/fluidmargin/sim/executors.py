"""Where the paths of a stress run execute: serially, on a local process pool, or on a Dask cluster.

Every executor has one method, ``map(fn, items, progress)``: ``fn`` applied to each item, the results
returned **in the order of the items** whatever order they finished in, so a run's numbers do not
depend on where it ran (each path carries its own seed; nothing is shared between tasks). The first
task that raises stops the run: its exception is raised again here, the tasks not yet started are
cancelled. ``progress(done, total)`` is called after each result arrives (in the calling process).

* :class:`SerialExecutor`: in this process, one after another (tests, debugging, one core);
* :class:`ProcessExecutor`: ``concurrent.futures.ProcessPoolExecutor`` with the ``spawn`` start method
  (no fork of a process holding threads or an engine; ``fn`` must be picklable: a module-level
  function or a ``functools.partial`` of one), ``workers`` processes, by default one per core, each
  with one numba thread (the cores are shared out by processes, not by kernel threads);
* :class:`DaskExecutor`: ``distributed.Client`` on a scheduler address (``tcp://host:8786``) or on a
  cluster object (``distributed.LocalCluster``); the workers must be able to import fluidmargin.

:func:`make_executor` picks one from the CLI's ``--scheduler`` and ``--workers``.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from fluidmargin.core.errors import ValidationError

T = TypeVar("T")
R = TypeVar("R")
Progress = Callable[[int, int], None]
EXECUTORS = ("serial", "process", "dask")


class Executor(Protocol):
    name: str

    def map(self, fn: Callable[[T], R], items: Sequence[T], progress: Progress | None = None) -> list[R]: ...


def _workers(workers: int | None) -> int:
    if workers is None:
        return max(1, os.cpu_count() or 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValidationError(f"workers must be a positive integer, got {workers!r}")
    return workers


class SerialExecutor:
    """Each item in turn, in this process."""

    name = "serial"

    def map(self, fn: Callable[[T], R], items: Sequence[T], progress: Progress | None = None) -> list[R]:
        out = []
        for item in items:
            out.append(fn(item))
            if progress is not None:
                progress(len(out), len(items))
        return out


def _one_numba_thread() -> None:
    """A pool worker's initializer: one numba thread (results never depend on it; speed does)."""
    import numba

    numba.set_num_threads(1)


class ProcessExecutor:
    """A spawn-started process pool of ``workers`` processes (None: one per core)."""

    name = "process"

    def __init__(self, workers: int | None = None) -> None:
        self.workers = _workers(workers)

    def map(self, fn: Callable[[T], R], items: Sequence[T], progress: Progress | None = None) -> list[R]:
        if not items:
            return []
        results: dict[int, R] = {}
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(
            max_workers=min(self.workers, len(items)), mp_context=ctx, initializer=_one_numba_thread
        ) as pool:
            futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
            try:
                for fut in cf.as_completed(futures):
                    results[futures[fut]] = fut.result()
                    if progress is not None:
                        progress(len(results), len(items))
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        return [results[i] for i in range(len(items))]


class DaskExecutor:
    """Tasks on a Dask cluster: ``address`` a scheduler address or a cluster object (LocalCluster)."""

    name = "dask"

    def __init__(self, address: Any, connect_timeout_s: float = 10.0) -> None:
        if address is None or (isinstance(address, str) and not address.strip()):
            raise ValidationError("a Dask executor needs a scheduler address (e.g. tcp://127.0.0.1:8786)")
        self.address = address
        self.connect_timeout_s = connect_timeout_s

    def map(self, fn: Callable[[T], R], items: Sequence[T], progress: Progress | None = None) -> list[R]:
        if not items:
            return []
        from distributed import Client, as_completed  # lazy: a heavy import only a Dask run needs

        try:
            client = Client(  # type: ignore[no-untyped-call]
                self.address, set_as_default=False, timeout=f"{self.connect_timeout_s}s"
            )
        except (OSError, TimeoutError) as e:
            raise ValidationError(f"cannot reach the Dask scheduler at {self.address}: {e}") from None
        results: dict[int, R] = {}
        try:
            futures = client.map(fn, list(items), pure=False)
            index = {f.key: i for i, f in enumerate(futures)}
            try:
                for fut in as_completed(futures, loop=client.loop):  # type: ignore[no-untyped-call]
                    results[index[fut.key]] = fut.result()
                    if progress is not None:
                        progress(len(results), len(items))
            except BaseException:
                client.cancel(futures)  # type: ignore[no-untyped-call]
                raise
        finally:
            client.close()  # type: ignore[no-untyped-call]
        return [results[i] for i in range(len(items))]


def make_executor(kind: str | None = None, workers: int | None = None, scheduler: str | None = None) -> Executor:
    """``dask`` when a scheduler address is given, else ``kind`` (default ``process``; ``serial``)."""
    if scheduler is not None:
        if kind not in (None, "dask"):
            raise ValidationError(f"a scheduler address runs on Dask, not on the {kind} executor")
        return DaskExecutor(scheduler)
    kind = kind or "process"
    if kind == "serial":
        return SerialExecutor()
    if kind == "process":
        return ProcessExecutor(workers)
    if kind == "dask":
        raise ValidationError("the dask executor needs a scheduler address")
    raise ValidationError(f"executor must be one of {', '.join(EXECUTORS)}, not {kind!r}")
