"""How long the compression phase would take on N workers, projected from one run's recorded tasks.

The model (stated in benchmarks/results/scale_out.md, computed by `project`):

    T(N) = max(C, S / N) + n o / N + D / B + G(N) / (N B)

- S: the summed seconds of every task the run recorded (trace H^-1, trace row chunks, layer tasks, nested
  masked-solve blocks), measured on one thread each: the work, which N workers share at best evenly;
- C: the critical path, the longest layer's chain: its H^-1 task, then its slowest row chunk, then its layer
  task's own work, then its slowest nested solve block (a layer cannot finish sooner, whatever N is);
- n o: the number of tasks times the per-task overhead o (scheduling, dispatch, argument resolution; measured
  on the runtime with empty tasks), spread over the N workers;
- D / B: the bytes through the driver (its puts of W, H, input norms; the results it gets back) over the
  bandwidth B (loopback TCP, measured): one link, whatever N is;
- G(N) / (N B): the bytes the tasks get and put (H^-1, W per chunk, chunk results, nested solve operands),
  spread over the N workers' links.  A node keeps an object it fetched, so a layer's H^-1 and W, read by each
  of its c row chunks, cross the network min(c, N) times (once per worker node at most); every other get
  is counted as a transfer (on one node most are shared memory: an upper bound).

The sharded calibration is projected alongside: its shard seconds are proportional to the samples a shard holds
(so S_cal / N), and every shard sends every layer's sum back through the driver (N times the recorded bytes
per shard), so its transfer grows with N.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Projection:
    workers: int
    seconds: float          # T(N) of the compression phase
    work: float             # S / N
    critical_path: float    # C
    overhead: float         # n o / N
    transfer: float         # D / B + G(N) / (N B)
    calibration: float | None  # the sharded calibration's projected seconds (None if none was recorded)

    @property
    def bound(self) -> str:
        return "critical path" if self.critical_path >= self.work else "work"

    def to_dict(self) -> dict:
        return {**asdict(self), "bound": self.bound}


def layer_tasks(rec: dict) -> tuple[float, float, int]:
    """(summed task seconds, critical path seconds, number of tasks) of one layer's record."""
    s = rec["seconds"]
    inv, chunks, blocks = s.get("inverse", []), s.get("chunks", []), s.get("solve_blocks", [])
    work = sum(inv) + sum(chunks) + s["layer_task"] + sum(blocks)
    path = max(inv, default=0.0) + max(chunks, default=0.0) + s["layer_task"] + max(blocks, default=0.0)
    return work, path, len(inv) + len(chunks) + 1 + len(blocks)


def driver_bytes(rec: dict) -> int:
    b = rec["bytes"]
    return sum(v for k, v in b.items() if k.startswith("put_") and k[4:] in ("W", "H", "sq_norms")) + b["get_result"]


def task_bytes(rec: dict, workers: int) -> float:
    """G of one layer on `workers` nodes: its tasks' bytes, the row chunks' shared H^-1 and W fetched at most
    once per node."""
    b, chunks = rec["bytes"], rec["chunks"]
    shared = b.get("get_inverse_chunks", 0) + b.get("get_W_chunks", 0)  # chunks x (H^-1 + W)
    other = rec["put"] + rec["get"] - driver_bytes(rec) - shared
    return other + (shared / chunks * min(chunks, workers) if chunks else 0.0)


def project(record: dict, workers: list[int], *, bandwidth: float, task_overhead: float) -> list[Projection]:
    """T(N) for each N of `workers` from a run's `CompressionReport.distributed` record (module doc);
    bandwidth in bytes/s, task_overhead in seconds per task."""
    layers = list(record["layers"].values())
    if not layers:
        raise ValueError("the record holds no distributed layer")
    per = [layer_tasks(r) for r in layers]
    S = sum(w for w, _, _ in per)
    C = max(p for _, p, _ in per)
    n = sum(k for _, _, k in per)
    D = sum(driver_bytes(r) for r in layers)
    cal = record.get("calibration") or []
    out = []
    for N in workers:
        calib = None
        if cal:
            calib = 0.0
            for c in cal:
                shards = len(c["shard_seconds"])
                per_shard = sum(c["shard_sums_by_layer"].values()) / max(1, shards)
                calib += (sum(c["shard_seconds"]) / N + N * per_shard / bandwidth
                          + (c["put"]["data_shards"] + N * (c["put"]["graph"] + c["put"]["sim_config"])) / bandwidth
                          + task_overhead)
        transfer = D / bandwidth + sum(task_bytes(r, N) for r in layers) / (N * bandwidth)
        out.append(Projection(N, max(C, S / N) + n * task_overhead / N + transfer, S / N, C, n * task_overhead / N,
                              transfer, calib))
    return out
