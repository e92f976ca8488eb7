"""When the compress/ kernels use threads, and how many.

Two kinds of threads: numba's (the ExactOBS kernels split a layer's independent rows over them, prange)
and the BLAS library's.  Threads cost a start-up and, on a busy machine, spin-waiting; on small problems
that costs more than the work (a 256 -> 10 layer was several times slower with two threads than with
one).  So a row-parallel kernel asks for threads by the size of its work: below PARALLEL_MIN_FLOP it
runs on one thread (the measurements behind the threshold: benchmarks/bench_kernels.py,
benchmarks/results/kernels.md).  Inside a row-parallel kernel the BLAS calls run on one thread each
(BLAS threads on top of row threads only wait for each other).
Results never depend on the thread count: rows are independent and each is computed by one thread.
For the same reason every BLAS / LAPACK call of compress/ runs on one BLAS thread (`blas_threads`):
the Hessian's syrk blocks, the factorizations, the masked solves' products and the sweeps.  OpenBLAS's
threaded potrf, syrk and gemm round differently with the thread count (checked here: the same call at 1
and 2 threads was not bitwise equal), which changed ExactOBS weights and would change masks.  The cores
are used by the row-parallel kernels, whose partition does not depend on the thread count, and by
`parallel_map`: fixed pieces of one computation (single-threaded, GIL-free BLAS calls) on Python threads
(docs/sbc_method.md §A.3).
"""

from __future__ import annotations

import contextlib
import contextvars
import threading

import numba

__all__ = ["PARALLEL_MIN_BYTES", "PARALLEL_MIN_FLOP", "blas_threads", "block_runner", "numba_threads", "parallel_map",
           "row_threads", "run_blocks_with", "run_graph"]

PARALLEL_MIN_FLOP = 2e8  # total work of a row-parallel kernel call below which one thread is faster

_controller: list = []


def row_threads(rows: int, flop_per_row: float) -> int:
    """How many numba threads a kernel over `rows` independent rows of `flop_per_row` each should use."""
    n = min(numba.get_num_threads(), rows)
    return n if n > 1 and rows * flop_per_row >= PARALLEL_MIN_FLOP else 1


class numba_threads:
    """numba's thread count for one parallel call, with one row per chunk (a thread slowed by other work
    on the machine does not hold a fixed share of the rows); both restored afterwards."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        self.old = numba.get_num_threads(), numba.get_parallel_chunksize()
        numba.set_num_threads(self.n)
        numba.set_parallel_chunksize(1)
        return self

    def __exit__(self, *exc):
        numba.set_num_threads(self.old[0])
        numba.set_parallel_chunksize(self.old[1])


_pool: list = []
_POOL_NAME = "sbc-blas"


PARALLEL_MIN_BYTES = 1 << 23  # a memory-bound pass over fewer bytes than this runs on one thread


def parallel_map(fn, items, flop: float = 0.0, nbytes: float = 0.0) -> list:
    """[fn(x) for x in items], on numba's thread count of Python threads when the work is large enough:
    `flop` in all >= PARALLEL_MIN_FLOP, or a memory-bound pass over `nbytes` >= PARALLEL_MIN_BYTES.  The
    pieces must be independent and release the GIL (NumPy's
    matmul, the ctypes BLAS calls of _openblas.py) to gain anything; each is computed the same way
    whichever thread runs it, so the result does not depend on the thread count.  BLAS runs on one
    thread meanwhile (the limit is process-wide: held here, so that the pieces' own `blas_threads`
    contexts, entered and left on several threads, restore one thread, not the caller's setting)."""
    items = list(items)
    n = min(numba.get_num_threads(), len(items))
    if threading.current_thread().name.startswith(_POOL_NAME):
        n = 1  # already inside a piece: a nested map on the same pool could wait on itself
    with blas_threads():
        if n < 2 or (flop < PARALLEL_MIN_FLOP and nbytes < PARALLEL_MIN_BYTES):
            return [fn(x) for x in items]
        return list(_executor(n).map(fn, items))


def _executor(n: int):
    if not _pool or _pool[0]._max_workers != n:
        from concurrent.futures import ThreadPoolExecutor

        _pool[:] = [ThreadPoolExecutor(max_workers=n, thread_name_prefix=_POOL_NAME)]
    return _pool[0]


def run_graph(tasks: dict, deps: dict, flop: float = 0.0) -> dict:
    """Run the tasks {key: fn} once each, fn() after every task in deps[key] has finished; ready tasks start
    in the order of their keys (sorted: a key that sorts first is on the critical path).  A task that
    returns a true value stops the run: no task starts after it (those already running finish).  Returns
    {key: result} of the tasks that ran.  On numba's thread count of Python threads when `flop` >=
    PARALLEL_MIN_FLOP, else in key order on this thread.  Each task computes the same numbers whichever
    thread runs it and whatever runs beside it (the dependencies fix what it reads), so the results do not
    depend on the thread count -- what parallel_map gives one step at a time, without waiting for a whole
    step's pieces before the next step's first piece (lookahead)."""
    import heapq

    n = numba.get_num_threads()
    if threading.current_thread().name.startswith(_POOL_NAME):
        n = 1
    waiting = {k: len(deps.get(k, ())) for k in tasks}
    after: dict = {k: [] for k in tasks}
    for k, ds in deps.items():
        for d in ds:
            after[d].append(k)
    ready = [k for k, c in waiting.items() if c == 0]
    heapq.heapify(ready)
    out: dict = {}
    with blas_threads():
        if n < 2 or flop < PARALLEL_MIN_FLOP:
            while ready:
                k = heapq.heappop(ready)
                out[k] = tasks[k]()
                if out[k]:
                    break
                for a in after[k]:
                    waiting[a] -= 1
                    if waiting[a] == 0:
                        heapq.heappush(ready, a)
            return _complete(out, tasks)
        cond = threading.Condition()
        state = {"running": 0, "stop": False, "error": None}

        def worker():
            while True:
                with cond:
                    while not ready and state["running"] and not state["stop"]:
                        cond.wait()
                    if state["stop"] or not ready:
                        cond.notify_all()
                        return
                    k = heapq.heappop(ready)
                    state["running"] += 1
                try:
                    r = tasks[k]()
                except BaseException as e:  # noqa: BLE001 - re-raised on the calling thread
                    r, state["error"] = True, e
                with cond:
                    state["running"] -= 1
                    out[k] = r
                    if r:
                        state["stop"] = True
                    else:
                        for a in after[k]:
                            waiting[a] -= 1
                            if waiting[a] == 0:
                                heapq.heappush(ready, a)
                    cond.notify_all()

        for f in [_executor(n).submit(worker) for _ in range(n)]:
            f.result()
        if state["error"] is not None:
            raise state["error"]
    return _complete(out, tasks)


def _complete(out: dict, tasks: dict) -> dict:
    """out, unless tasks were left that never became ready (a dependency cycle or a missing task) with no
    task having stopped the run."""
    if len(out) < len(tasks) and not any(out.values()):
        raise RuntimeError(f"run_graph: {len(tasks) - len(out)} task(s) never became ready")
    return out


def blas_threads():
    """A context running BLAS (NumPy's and SciPy's libraries, which numba calls too) on one thread."""
    if not _controller:
        try:
            from threadpoolctl import ThreadpoolController
            _controller.append(ThreadpoolController())
        except ImportError:  # pragma: no cover - threadpoolctl is a dependency; without it: default threads
            _controller.append(None)
    if _controller[0] is None:  # pragma: no cover
        return contextlib.nullcontext()
    return _controller[0].limit(limits=1, user_api="blas")


# ---- row blocks run elsewhere (distributed/): a kernel over independent blocks of rows may hand them to a
# runner, runner(kernel, shared, spans, flop) -> [kernel(*shared, r0, r1) for (r0, r1) in spans], e.g. as tasks
# of a cluster.  The runner computes the very calls the kernel would, so the bits are the same.
_block_runner: contextvars.ContextVar = contextvars.ContextVar("sbc_block_runner", default=None)


def block_runner():
    """The runner set by `run_blocks_with` (None: the kernel runs its blocks itself)."""
    return _block_runner.get()


@contextlib.contextmanager
def run_blocks_with(runner):
    token = _block_runner.set(runner)
    try:
        yield
    finally:
        _block_runner.reset(token)
