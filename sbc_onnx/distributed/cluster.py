"""The Ray runtime of one compress() call: started locally (`workers`) or joined (`ray_address`).

Ray is imported here, inside functions, and nowhere else in sbc_onnx: without the options nothing changes.
Large arrays (the calibration set's shards, Hessians, H^-1, weights) go to the object store once
(`ray.put`; a task's return value is in the store already) and tasks receive references.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import socket
import time

from ..calibrate import Calibration, merge_shards
from ..errors import SbcError
from ..progress import progress_bar
from . import tasks
from .traffic import nbytes, pickled_bytes

log = logging.getLogger("sbc_onnx")

INSTALL_HINT = "pip install 'sbc-onnx[distributed]'"
MAX_RETRIES = 3  # a task whose worker died is run again (its result does not depend on where it runs)
# the single-thread settings every worker process starts with (tasks.one_thread also sets them per task)
ONE_THREAD_ENV = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                  "MKL_NUM_THREADS": "1"}


def import_ray():
    """The ray module, or an SbcError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise SbcError(f"--workers / --ray-address need Ray: {INSTALL_HINT}") from None
    return ray


def check_options(workers: int | None, ray_address: str | None):
    """SbcError unless the options make sense and Ray is installed (before any work); the ray module."""
    if workers is not None and ray_address is not None:
        raise SbcError("give either --workers (a local Ray runtime) or --ray-address (a running cluster), not both")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise SbcError(f"workers must be an integer >= 1, got {workers!r}")
    if ray_address is not None and (not isinstance(ray_address, str) or not ray_address.strip()):
        raise SbcError(f"ray_address must be an address such as HOST:6379 or auto, got {ray_address!r}")
    return import_ray()


def connect(workers: int | None = None, ray_address: str | None = None) -> Cluster | None:
    """The cluster for `workers` local worker processes or the Ray cluster at `ray_address` ("auto": the
    one `ray start` runs on this machine); None when neither is given (then Ray is never imported).
    An already initialised Ray runtime (e.g. a caller's `ray.init`) is used as it is and left running."""
    if workers is None and ray_address is None:
        return None
    ray = check_options(workers, ray_address)
    started = False
    if not ray.is_initialized():
        kwargs = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
                      runtime_env={"env_vars": ONE_THREAD_ENV})
        try:
            if ray_address is not None:
                check_reachable(ray_address)
                ray.init(address=ray_address, **kwargs)
            else:
                ray.init(address="local", num_cpus=workers, **kwargs)  # a new runtime, not a `ray start` one
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"the Ray cluster at {ray_address}" if ray_address else "a local Ray runtime"
            raise SbcError(f"cannot start or join {where}: {_first_line(e)}") from None
        started = True
    n = int(ray.cluster_resources().get("CPU", 0)) if workers is None else workers
    return Cluster(ray, max(1, n), started)


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """SbcError when a HOST:PORT address takes no TCP connection: ray.init would retry for minutes before
    failing.  Other forms ("auto", "local", "ray://...") are left to Ray, which fails fast on them."""
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or "://" in host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise SbcError(f"cannot reach the Ray cluster at {address}: {e.strerror or type(e).__name__} (is `ray start "
                       f"--head --port {port}` running there?)") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class Cluster:
    """Submits the tasks of compress() and gathers their results (layers.py for the layers)."""

    def __init__(self, ray, workers: int, started: bool):
        self.ray, self.workers, self.started = ray, workers, started
        self.marker = os.environ.get(tasks.KILL_ONCE_ENV) or None
        self.calibration_records: list[dict] = []  # bytes and seconds of each sharded calibration (calibrate)
        hold = os.environ.get(tasks.HOLD_FROM_ENV, "")
        self.hold_from = int(hold) if hold.isdigit() else None
        opts = dict(num_cpus=1, max_retries=MAX_RETRIES)
        self.calibrate_shard = ray.remote(**opts)(tasks.calibrate_shard)
        self.trace_inverse = ray.remote(**opts)(tasks.trace_inverse)
        self.trace_chunk = ray.remote(**opts)(tasks.trace_chunk)
        self.compress_layer = ray.remote(**opts)(tasks.compress_layer_task)

    def describe(self) -> str:
        return f"{self.workers} Ray worker(s)"

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
            self.started = False

    @contextlib.contextmanager
    def lost(self):
        """Errors of the cluster itself (a node or the connection gone, retries used up) as one SbcError; an
        exception raised by a task's own code is raised as it is."""
        exc = self.ray.exceptions
        try:
            yield
        except exc.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, Exception) and not isinstance(cause, exc.RayError):
                raise cause from None
            raise SbcError(f"a task on the Ray cluster failed: {_first_line(e)}") from None
        except exc.RayError as e:
            raise SbcError(f"the Ray cluster was lost ({type(e).__name__}: {_first_line(e)}); layers already "
                           "finished are kept in the --resume folder, if one was given") from None

    def put(self, value):
        return self.ray.put(value)

    def get(self, refs):
        with self.lost():
            return self.ray.get(refs)

    def wait(self, refs, timeout: float, num_returns: int | None = None):
        """The refs among `refs` that are done, waiting up to `timeout` s for all of them (or `num_returns`);
        results stay where they are."""
        with self.lost():
            ready, _ = self.ray.wait(refs, num_returns=min(len(refs), num_returns or len(refs)), timeout=timeout,
                                     fetch_local=False)
        return ready

    # ---- calibration
    def calibrate(self, walker, data, *, layers: list[str], objective: str, batch_size: int, input_norms: bool,
                  progress: bool = False) -> Calibration:
        """The walker's pass split into one shard of consecutive whole batches per worker; the shards' sums
        added in shard order (calibrate.merge_shards: the single-process Hessians up to float64 round-off)."""
        t0 = time.perf_counter()
        batches = math.ceil(data.n / batch_size)
        if batches == 0:
            raise SbcError("the calibration dataset is empty")
        n = min(self.workers, batches)
        bounds = [round(batches * i / n) for i in range(n + 1)]
        fg, cfg = self.put(walker.fg), self.put(walker.cfg)
        put = {"graph": pickled_bytes(walker.fg), "sim_config": pickled_bytes(walker.cfg), "data_shards": 0}
        refs = []
        for b0, b1 in itertools.pairwise(bounds):
            shard = data.take((b1 - b0) * batch_size, b0 * batch_size)
            put["data_shards"] += pickled_bytes(shard)
            refs.append(self.calibrate_shard.remote(fg, cfg, self.put(shard), layers, objective, batch_size,
                                                    input_norms))
        bar = progress_bar(n, f"calibrating on {n} shard(s)", progress)
        shards = self._gather(refs, bar)
        # what went through the store: the inputs above (each shard task got the graph and its shard), and
        # per layer the shards' sums the driver got back
        self.calibration_records.append({
            "put": put, "get_by_tasks": n * (put["graph"] + put["sim_config"]) + put["data_shards"],
            "shard_sums_by_layer": {name: sum(nbytes(s["layers"][name]) for s in shards) for name in layers},
            "shard_seconds": [s["task_seconds"] for s in shards]})
        return merge_shards(walker.fg, walker.cfg, shards, layers=layers, objective=objective,
                            input_norms=input_norms, seconds=time.perf_counter() - t0)

    def _gather(self, refs, bar) -> list:
        pending = list(refs)
        while pending:
            ready = self.wait(pending, timeout=1.0)
            if bar is not None and ready:
                bar.update(len(ready))
            pending = [r for r in pending if r not in ready]
        if bar is not None:
            bar.close()
        return self.get(list(refs))
