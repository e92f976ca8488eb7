"""What a Ray worker runs (plain functions; cluster.py wraps them with `ray.remote`); ray itself only where a
layer task hands its masked solves on as nested tasks (`BlocksOnCluster`).

Every task computes on ONE thread (numba's and BLAS's): N workers then use N cores, and each row is
computed by the very code, on one thread, that the single-process path runs, so the bits are the same
(compress/threads.py: results never depend on the thread count, and BLAS always runs on one thread).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass

import numpy as np

from ..calibrate import calibrate, shard_sums
from ..compress import FactorizationError, ObsTrace, compress_groups, damped_inverse, nm_pattern, obs_trace
from ..compress.obs import trace_operand
from ..compress.threads import blas_threads, run_blocks_with
from ..sim import Walker
from .traffic import nbytes

# tests: a marker path; the first compression task (trace chunk or layer) to claim it kills its own worker
KILL_ONCE_ENV = "SBC_ONNX_TEST_KILL_WORKER"
# tests of a lost cluster: layer tasks of this layer index on wait HOLD_SECONDS first (so that the cluster is
# killed while the driver waits for them, after the layers before are saved)
HOLD_FROM_ENV = "SBC_ONNX_TEST_HOLD_FROM_LAYER"
HOLD_SECONDS = 120.0


@contextlib.contextmanager
def one_thread():
    """numba and BLAS on one thread for the task (restored afterwards: a local worker may be reused)."""
    import numba

    old = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        with blas_threads():
            yield
    finally:
        numba.set_num_threads(old)


def die_once(marker: str | None) -> None:
    """Tests of the retries: the first task (of any worker) to create `marker` kills its own worker process,
    as a crash would; the retried task finds the marker and runs normally."""
    if not marker:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


def calibrate_shard(fg, cfg, data, layers, objective: str, batch_size: int, input_norms: bool) -> dict:
    """One shard of whole batches through the walker: the raw per-layer sums (calibrate.shard_sums)."""
    t0 = time.perf_counter()
    with one_thread():
        cal = calibrate(Walker(fg, cfg), data, layers=layers, objective=objective, batch_size=batch_size,
                        input_norms=input_norms)
    return {**shard_sums(cal), "task_seconds": time.perf_counter() - t0}


def trace_inverse(H, cols: slice, rel_damp: float, max_damp: float):
    """(the trace's float32 H^-1 of one group's block, the damping used, seconds), or None if it cannot be
    factorised (the layer task then falls back, as the single-process path does)."""
    t0 = time.perf_counter()
    with one_thread():
        try:
            Hinv, rd, _ = damped_inverse(np.asarray(H[cols, cols], np.float64), rel_damp, max_damp)
        except FactorizationError:
            return None
        return trace_operand(Hinv), rd, time.perf_counter() - t0


def trace_chunk(inverse, W, rows: slice, pattern, marker=None):
    """(order, scores, seconds, damping, traffic) of the ExactOBS trace of rows `rows` of W (None if no
    inverse); traffic: the bytes this task got from the store (W, H^-1) and the inverse task's seconds."""
    die_once(marker)
    if inverse is None:
        return None
    t0 = time.perf_counter()
    # a writable copy (the store's arrays are read-only, which numba compiles as another, slower-to-load type)
    H0 = np.array(inverse[0], order="C", copy=True)
    with one_thread():
        order, scores = obs_trace(W[rows], H0, pattern=pattern, prepared=True)
    traffic = {"get": W.nbytes + inverse[0].nbytes, "inverse": inverse[0].nbytes, "inverse_s": inverse[2]}
    return order, scores, time.perf_counter() - t0, inverse[1], traffic


def assemble_trace(chunks, pattern) -> ObsTrace | None:
    """One group's ObsTrace from its row chunks (`trace_chunk`), in order; None if its Hessian could not be
    factorised."""
    if chunks[0] is None:
        return None
    return ObsTrace(np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks]), chunks[0][3],
                    nm_pattern(pattern))


def compress_layer_task(W, H, groups: int, k: int, bits, sq_norms, options: dict, given, layout, solve: BlocksOnCluster,
                        marker, hold: bool, *parts):
    """compress_groups on one layer, with the traces given (the "obs" allocation's, `given`) or assembled from
    their row chunks: `layout` holds, per group, None (no trace) or the number of its chunks, and `parts` the
    resolved chunks of the traced groups in order; `solve` runs the masked solves' row chunks.
    Returns (results, trace seconds, info): info holds the bytes this layer moved through the store beyond the
    driver's own puts and gets (traffic.layer_record) and every task's seconds."""
    die_once(marker)
    if hold:
        time.sleep(HOLD_SECONDS)
    t0 = time.thread_time()  # its own work: a layer task blocked on its nested tasks (or behind other tasks
    _nested.update(put=0, get=0, seconds=[])  # queued for the same workers) uses no CPU meanwhile
    traces, spent = given, 0.0
    b = {"get_W_layer": W.nbytes, "get_H_layer": H.nbytes, "put_inverse": 0, "get_inverse_chunks": 0,
         "get_W_chunks": 0, "put_chunk_results": 0}
    sec: dict = {"inverse": [], "chunks": []}
    if given is None and any(n is not None for n in layout):
        traces, pos = [], 0
        for n in layout:
            if n is None:
                traces.append(None)
                continue
            chunks = parts[pos:pos + n]
            pos += n
            spent += sum(c[2] for c in chunks if c is not None)
            traces.append(assemble_trace(chunks, options.get("pattern")))
            done = [c for c in chunks if c is not None]
            if done:
                b["put_inverse"] += done[0][4]["inverse"]
                sec["inverse"].append(done[0][4]["inverse_s"])
                sec["chunks"] += [c[2] for c in done]
                b["get_inverse_chunks"] += sum(c[4]["inverse"] for c in done)
                b["get_W_chunks"] += sum(c[4]["get"] - c[4]["inverse"] for c in done)
                b["put_chunk_results"] += sum(c[0].nbytes + c[1].nbytes for c in done)
    b["get_chunk_results"] = b["put_chunk_results"]  # this task got every chunk's result
    with one_thread(), run_blocks_with(solve):
        results = compress_groups(W, H, groups, k, bits=bits, sq_norms=sq_norms, traces=traces, **options)
    b["put_solve_shared"], b["get_solve_blocks"] = _nested["put"], _nested["get"]
    sec["solve_blocks"] = list(_nested["seconds"])
    sec["layer_task"] = time.thread_time() - t0  # CPU time of this thread: the nested tasks ran elsewhere
    return results, spent, {"bytes": {k: int(v) for k, v in b.items()}, "seconds": sec}


# ---- a layer task's masked solves (compress/obs.py), in row chunks: nested tasks (a task blocked on its
# children gives its CPU back to them)
_remote: dict = {}
_nested: dict = {"put": 0, "get": 0, "seconds": []}  # this worker's current layer task's nested tasks


@dataclass(frozen=True)
class BlocksOnCluster:
    """compress.threads block runner: `kernel(*shared, r0, r1)` over `spans` (aligned row blocks), grouped into
    chunks of about `chunk_flop`, as tasks of the cluster this task runs on (the shared arrays put in the
    object store once); below `min_flop` in this task."""
    min_flop: float
    chunk_flop: float

    def __call__(self, kernel, shared: tuple, spans: list, flop: float) -> list:
        if flop < self.min_flop or len(spans) < 2:
            return [kernel(*shared, r0, r1) for r0, r1 in spans]
        import ray

        if "blocks" not in _remote:
            _remote["blocks"] = ray.remote(num_cpus=1, max_retries=3)(run_blocks)
        step = max(1, int(self.chunk_flop // max(flop / len(spans), 1.0)))
        refs = [ray.put(a) for a in shared]
        chunks = [(spans[i][0], spans[min(len(spans), i + step) - 1][1]) for i in range(0, len(spans), step)]
        done = ray.get([_remote["blocks"].remote(kernel, r0, r1, *refs) for r0, r1 in chunks])
        shared_bytes = nbytes(list(shared))
        out = [d[0] for d in done]
        _nested["put"] += shared_bytes + nbytes(out)  # the shared arrays once, each chunk's result
        _nested["get"] += len(chunks) * shared_bytes + nbytes(out)  # every chunk task got them; this task the results
        _nested["seconds"] += [d[1] for d in done]
        return out


def run_blocks(kernel, r0: int, r1: int, *shared):
    """(the kernel's result on rows r0:r1, seconds)."""
    t0 = time.perf_counter()
    with one_thread():
        return kernel(*shared, r0, r1), time.perf_counter() - t0
