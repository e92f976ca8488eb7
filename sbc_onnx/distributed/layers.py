"""Layers compressed across the cluster, results handed back in layer order.

Per layer: its H and W go to the object store once.  Where the method prunes with ExactOBS, each group's
trace (the long phase: ~2/3 d^3 per row) is split into row chunks: one task computes the group's damped
H^-1 (the operand of the trace), one task per chunk traces its rows on it (rows are independent; a chunk
runs the same compiled per-row code on one thread as the single-process path, so the same bits), and the
layer task (masks, masked solves, quantization, report objectives: `compress_groups`, given the traces)
starts when its chunks are done; its masked solves, in aligned 64-row blocks (compress/obs.py), run as nested
tasks of several blocks each when they are long (tasks.BlocksOnCluster).  Layers without a trace are one task
each.  Layers are independent under
the default dense calibration, so several are in flight at once (`window`); `--sequential` gives a window of
one layer: the workers then share that layer's row chunks.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from ..compress import group_blocks
from ..compress.layer import group_counts
from .tasks import BlocksOnCluster, assemble_trace
from .traffic import layer_record, nbytes

CHUNK_FLOP = 4e9  # the trace work of one row chunk: enough rows that a task's overhead is small against it
# the masked solves of a layer task: chunks of about SOLVE_CHUNK_FLOP as nested tasks above SOLVE_MIN_FLOP
SOLVE_CHUNK_FLOP = 4e9
SOLVE_MIN_FLOP = 2e10


@dataclass
class LayerJob:
    """One layer to compress: what `compress_groups` takes, and where it is in the model."""
    index: int
    W: np.ndarray          # the layer matrix (d_out, d_in / groups)
    H: np.ndarray          # its Hessian (d_in, d_in)
    groups: int
    k: int                 # weights to prune
    bits: int | None
    sq_norms: np.ndarray | None = None
    traces: list | None = None  # the "obs" allocation's traces (then none is run here)


def chunk_rows(d_out: int, d_in: int) -> int:
    """Rows per trace chunk: about CHUNK_FLOP of work (2/3 d^3 per row), at least one row."""
    return max(1, min(d_out, math.ceil(CHUNK_FLOP / max(1.0, 2 / 3 * float(d_in) ** 3))))


class _Submitted:
    def __init__(self, job: LayerJob, ref, chunks: list, put: dict):
        self.job, self.ref, self.chunks = job, ref, chunks  # chunks: those not seen done yet
        self.n_chunks, self.put = len(chunks), put  # the driver's puts for it, bytes by name
        self.done = False


class LayerRunner:
    """Submits LayerJobs to a Cluster and yields (job, results, trace seconds) in submission order; `records`:
    per layer index, the bytes it moved through the object store and its tasks' seconds (traffic.layer_record)."""

    def __init__(self, cluster, options: dict, *, obs_trace: bool, rel_damp: float, max_damp: float = 1.0):
        self.cluster, self.options = cluster, dict(options)
        self.obs_trace, self.rel_damp, self.max_damp = obs_trace, rel_damp, max_damp
        self.chunks_done = self.chunks_total = 0
        self.records: dict[int, dict] = {}

    def traces(self, layers: list[tuple[np.ndarray, np.ndarray, int]]) -> list[list]:
        """Every group's ExactOBS trace (no pattern) of each (W, H, groups), computed in row chunks across the
        cluster: what the "obs" allocation ranks by (LayerStats.traces)."""
        c = self.cluster
        refs = []
        for W, H, groups in layers:
            w_ref, h_ref = c.put(W), c.put(H)
            refs.append([self._trace(w_ref, h_ref, rows, cols, None) for _, rows, cols in
                         group_blocks(W.shape, groups)])
        out = []
        for layer in refs:
            out.append([assemble_trace(c.get(chunks), None) for chunks in layer])
            self.chunks_done += sum(len(chunks) for chunks in layer)
        return out

    def _trace(self, w_ref, h_ref, rows: slice, cols: slice, pattern) -> list:
        """The chunk refs of one group's trace (its inverse goes from task to task in the store)."""
        c = self.cluster
        inverse = c.trace_inverse.remote(h_ref, cols, self.rel_damp, self.max_damp)
        step = chunk_rows(rows.stop - rows.start, cols.stop - cols.start)
        chunks = [c.trace_chunk.remote(inverse, w_ref, slice(r0, min(rows.stop, r0 + step)), pattern, c.marker)
                  for r0 in range(rows.start, rows.stop, step)]
        self.chunks_total += len(chunks)
        return chunks

    def submit(self, job: LayerJob) -> _Submitted:
        c = self.cluster
        w_ref, h_ref = c.put(job.W), c.put(job.H)
        pattern = self.options.get("pattern")
        layout, chunks = [], []
        counts = group_counts(job.k, job.groups)
        for g, rows, cols in group_blocks(np.shape(job.W), job.groups):
            if job.traces is not None or not self.obs_trace or (pattern is None and counts[g] == 0):
                layout.append(None)
                continue
            group_chunks = self._trace(w_ref, h_ref, rows, cols, pattern)
            layout.append(len(group_chunks))
            chunks += group_chunks
        hold = c.hold_from is not None and job.index >= c.hold_from
        # a held task (tests of a lost cluster) waits on no CPU: the nested tasks of the layers before it get the
        # workers
        task = c.compress_layer.options(num_cpus=0) if hold else c.compress_layer
        ref = task.remote(w_ref, h_ref, job.groups, job.k, job.bits, job.sq_norms, self.options, job.traces, layout,
                          BlocksOnCluster(SOLVE_MIN_FLOP, SOLVE_CHUNK_FLOP), c.marker, hold, *chunks)
        put = {"W": job.W.nbytes, "H": job.H.nbytes, "sq_norms": nbytes(job.sq_norms)}  # sq_norms: in the task spec
        job.H = job.sq_norms = None  # in the store now; a layer waiting to be taken holds no copy here
        return _Submitted(job, ref, list(chunks), put)

    def run(self, jobs: Iterator[LayerJob], window: int, on_wait: Callable[[], None] | None = None, *,
            in_order: bool = False):
        """Yield (job, results, trace seconds) for each job, in order, with at most `window` layers computing at
        once (a layer done but not yet yielded does not count, so the workers stay busy behind a long layer).
        in_order: the next job is drawn only once the one before it was taken (a sequential calibration then
        sees it applied).  on_wait() is called about once a second while waiting."""
        pending: deque[_Submitted] = deque()
        jobs = iter(jobs)
        more = True
        while True:
            while more and (len(pending) if in_order else sum(not s.done for s in pending)) < window:
                job = next(jobs, None)
                if job is None:
                    more = False
                else:
                    pending.append(self.submit(job))
            if not pending:
                return
            if not pending[0].done:
                self._wait(pending, on_wait)
                continue
            head = pending.popleft()
            results, spent, info = self.cluster.get(head.ref)
            self.records[head.job.index] = layer_record(info, put=head.put, result_bytes=nbytes(results),
                                                        chunks=head.n_chunks)
            yield head.job, results, spent

    def _wait(self, pending, on_wait) -> None:
        """Until a layer is done or a second has passed, counting the row chunks done meanwhile."""
        refs = [s.ref for s in pending if not s.done]
        ready = set(self.cluster.wait(refs, timeout=1.0, num_returns=1))  # returns when one layer is done
        ready |= set(self.cluster.wait(refs, timeout=0))
        chunks = [r for s in pending for r in s.chunks]
        ready |= set(self.cluster.wait(chunks, timeout=0)) if chunks else set()
        for s in pending:
            left = [r for r in s.chunks if r not in ready]
            if s.ref in ready:
                s.done, left = True, []  # its chunks were done before it, whether seen or not
            self.chunks_done += len(s.chunks) - len(left)
            s.chunks = left
        if on_wait is not None:
            on_wait()
