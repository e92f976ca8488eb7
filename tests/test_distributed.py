"""compress() over Ray workers (issue #15, sbc_onnx/distributed/): the single-process result, bit for bit where it
must be; sharded Hessians; a killed worker; no Ray without the options.  One two-CPU local Ray runtime serves
the module (started by the fixture; compress() uses it as it is)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import sbc_onnx as sbc
from sbc_onnx.calibrate import calibrate
from sbc_onnx.data import Dataset, load_nmnist
from sbc_onnx.distributed import KILL_ONCE_ENV
from sbc_onnx.graph import flatten
from sbc_onnx.pipeline import compress
from sbc_onnx.sim import Walker

ROOT = Path(__file__).resolve().parents[1]
SEW = ROOT / "examples" / "models" / "sew_resnet_mnist.nir"


def _weights(g) -> dict[str, np.ndarray]:
    fg = flatten(g)
    return {n: np.asarray(fg.nodes[n].weight) for n in fg.weight_nodes()}


def assert_same_result(a, b) -> None:
    """Masks bitwise, weights within 1e-6 relative (per layer, against its largest weight)."""
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for n in wa:
        np.testing.assert_array_equal(wa[n] != 0, wb[n] != 0, err_msg=f"mask of {n}")
        scale = max(float(np.max(np.abs(wa[n]))), 1e-30)
        assert np.max(np.abs(wa[n] - wb[n])) <= 1e-6 * scale, n


# ---- no Ray unless asked for (subprocesses: this module's runtime must not count)

def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})


SMALL = """
import numpy as np, sys
sys.path.insert(0, {tests!r})
from topologies import ALL
import sbc_onnx as sbc
from sbc_onnx.data import Dataset
g = ALL["sequential"](np.random.default_rng(0))[0]
x = (np.random.default_rng(1).random((6, 20, 4)) < 0.3).astype(np.float32)
data = Dataset(x, np.zeros(6, int))
"""


def test_no_ray_import_without_the_options(tmp_path):
    code = SMALL.format(tests=str(ROOT / "tests")) + f"""
from sbc_onnx.cli import main
sbc.save_model(g, {str(tmp_path / 'm.nir')!r}, cfg=sbc.SimConfig(dt=1e-3))
from sbc_onnx.data import save_dataset
save_dataset(data, {str(tmp_path / 'c.npz')!r})
sbc.compress(g, data, sparsity=0.5, measure_damage=False)
try:
    main(["compress", {str(tmp_path / 'm.nir')!r}, "--calib", {str(tmp_path / 'c.npz')!r}, "-o",
          {str(tmp_path / 'o.nir')!r}, "--sparsity", "0.5"])
except SystemExit as e:
    assert not e.code, e.code
print("ray" in sys.modules, any(m.startswith("ray.") for m in sys.modules))
"""
    r = _run(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-2:] == ["False", "False"]
    assert (tmp_path / "o.nir").is_file()


def test_ray_missing_is_one_line_error():
    code = SMALL.format(tests=str(ROOT / "tests")) + """
sys.modules["ray"] = None  # import ray now fails as if it were not installed
from sbc_onnx.errors import SbcError
try:
    sbc.compress(g, data, sparsity=0.5, measure_damage=False, workers=2)
except SbcError as e:
    print("SbcError:", e)
"""
    r = _run(code)
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip().splitlines()[-1]
    assert line.startswith("SbcError:") and "pip install 'sbc-onnx[distributed]'" in line


def test_unreachable_cluster_is_one_line_error():
    """A HOST:PORT nobody listens on is refused in one line before ray.init, which would retry for minutes."""
    pytest.importorskip("ray")
    import socket

    with socket.socket() as s:  # a free port, bound but not listening: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        code = SMALL.format(tests=str(ROOT / "tests")) + f"""
from sbc_onnx.errors import SbcError
try:
    sbc.compress(g, data, sparsity=0.5, measure_damage=False, ray_address="127.0.0.1:{port}")
except SbcError as e:
    print("SbcError:", e)
"""
        r = _run(code)
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip().splitlines()[-1]
    assert line.startswith(f"SbcError: cannot reach the Ray cluster at 127.0.0.1:{port}"), line


# ---- on a two-worker local runtime

@pytest.fixture(scope="module")
def ray_runtime():
    ray = pytest.importorskip("ray")
    from sbc_onnx.distributed.cluster import ONE_THREAD_ENV

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": ONE_THREAD_ENV})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def cnn(data_dir, tmp_path_factory):
    """cnn_sinabs, the first 70 steps of two N-MNIST recordings (batch size 1: two shards of one batch), and
    its single-process calibration."""
    g = sbc.load_model(data_dir / "nir_paper/02_cnn/cnn_sinabs.nir")
    listing = tmp_path_factory.mktemp("nmnist") / "two.txt"  # the list's first two recordings: read only those
    listing.write_text("\n".join((data_dir / "nmnist_small/train500.txt").read_text().splitlines()[:3]) + "\n")
    rec = load_nmnist(data_dir / "nmnist_small/train", listing)
    assert rec.n == 2
    data = Dataset(np.asarray(rec.x)[:, :70], rec.y)
    walker = Walker(g, sbc.SimConfig.from_graph(g))
    return g, data, walker, calibrate(walker, data, batch_size=1)


def test_sharded_hessians_equal_single_process(ray_runtime, cnn):
    from sbc_onnx.distributed import connect

    _, data, walker, single = cnn
    names = list(single.layers)
    sharded = connect(workers=2).calibrate(walker, data, layers=names, objective="smp", batch_size=1,
                                           input_norms=True)
    assert (sharded.n_samples, sharded.steps) == (single.n_samples, single.steps)
    for n in names:
        a, b = single.layers[n], sharded.layers[n]
        assert a.acc.n_units == b.acc.n_units
        np.testing.assert_allclose(b.H, a.H, rtol=1e-12, atol=1e-12 * float(np.max(np.abs(a.H))), err_msg=n)
        np.testing.assert_allclose(b.acc.sq_norms, a.acc.sq_norms, rtol=1e-12)
        assert (b.inputs.count, b.inputs.low, b.inputs.high) == (a.inputs.count, a.inputs.low, a.inputs.high)
    assert sharded.notes == single.notes


def test_cnn_sinabs_two_workers_equal_single_process(ray_runtime, cnn):
    g, data, _, single = cnn
    kw = dict(sparsity=0.5, method="sbc", batch_size=1, measure_damage=False)
    a, ra = compress(g, data, calibration=single, **kw)
    b, rb = compress(g, data, workers=2, **kw)
    assert_same_result(a, b)
    # the report's objectives are float32 products with H, which differs in float64 round-off here
    assert [r.objective_after for r in ra.layers] == pytest.approx([r.objective_after for r in rb.layers],
                                                                    rel=1e-3, abs=1e-9)


@pytest.fixture(scope="module")
def sew(data_dir):
    if not SEW.is_file():
        pytest.skip(f"{SEW} is missing")
    g = sbc.load_model(SEW)
    data = sbc.load_mnist(data_dir / "mnist", start=5000, limit=4, steps=4, encoding="analog", shape=(1, 28, 28))
    kw = dict(sparsity=0.5, method="sbc", batch_size=2, measure_damage=False)
    return g, data, kw, compress(g, data, **kw)[0]


def test_sew_resnet_two_workers_equal_single_process(ray_runtime, sew):
    g, data, kw, single = sew
    assert_same_result(single, compress(g, data, workers=2, **kw)[0])


def test_killed_worker_is_retried_with_identical_output(ray_runtime, sew, tmp_path, monkeypatch):
    g, data, kw, single = sew
    marker = tmp_path / "killed"
    monkeypatch.setenv(KILL_ONCE_ENV, str(marker))  # the first task to claim it kills its own worker
    out = compress(g, data, workers=2, **kw)[0]
    assert marker.exists()  # a worker did die
    assert_same_result(single, out)


def test_obs_allocation_and_quantization_equal_single_process(ray_runtime):
    """The "obs" allocation's traces computed in row chunks across the workers, then 4-bit GPTQ."""
    from sbc_onnx.synthetic import sew_resnet_graph

    g = sew_resnet_graph(image=16, widths=(4, 8, 8, 8), blocks=(1, 1, 1, 1), classes=4, seed=0)
    x = np.random.default_rng(1).random((6, 4, 3, 16, 16)).astype(np.float32)
    data = Dataset(x, np.zeros(6, int))
    kw = dict(sparsity=0.6, bits=4, allocation="obs", batch_size=3, measure_damage=False)
    a, ra = compress(g, data, **kw)
    b, rb = compress(g, data, workers=2, **kw)
    assert_same_result(a, b)
    assert [r.sparsity for r in ra.layers] == [r.sparsity for r in rb.layers]


def test_cli_two_workers_end_to_end(ray_runtime, tmp_path):
    from sbc_onnx.cli import main
    from sbc_onnx.data import save_dataset

    sys.path.insert(0, str(ROOT / "tests"))
    from topologies import ALL

    g = ALL["sequential"](np.random.default_rng(0))[0]
    x = (np.random.default_rng(1).random((6, 20, 4)) < 0.3).astype(np.float32)
    data = Dataset(x, np.zeros(6, int))
    cfg = sbc.SimConfig(dt=1e-3)
    sbc.save_model(g, tmp_path / "m.nir", cfg=cfg)
    save_dataset(data, tmp_path / "c.npz")
    for out, extra in (("one.nir", []), ("two.nir", ["--workers", "2"])):
        try:
            main(["compress", str(tmp_path / "m.nir"), "--calib", str(tmp_path / "c.npz"), "-o", str(tmp_path / out),
                  "--sparsity", "0.5", "--batch-size", "2", "--report", str(tmp_path / (out + ".json")), *extra])
        except SystemExit as e:
            assert not e.code
    assert_same_result(sbc.load_model(tmp_path / "one.nir"), sbc.load_model(tmp_path / "two.nir"))
    one, two = (json.loads((tmp_path / f"{o}.json").read_text()) for o in ("one.nir", "two.nir"))
    assert one["n_calibration"] == two["n_calibration"] == 6



def test_small_row_chunks_reproduce_the_bits(ray_runtime, cnn, monkeypatch):
    """Every ExactOBS trace in chunks of one row and every layer's masked solves in nested tasks of one 64-row
    block each: a row's bits do not depend on where, or beside which rows, it is computed."""
    from sbc_onnx.distributed import layers

    monkeypatch.setattr(layers, "CHUNK_FLOP", 1.0)
    monkeypatch.setattr(layers, "SOLVE_MIN_FLOP", 0.0)
    monkeypatch.setattr(layers, "SOLVE_CHUNK_FLOP", 1.0)
    g, data, _, single = cnn
    kw = dict(sparsity=0.5, method="sbc", batch_size=1, measure_damage=False, calibration=single)
    assert_same_result(compress(g, data, **kw)[0], compress(g, data, workers=2, **kw)[0])


def test_masked_solve_blocks_as_tasks_equal_in_process(ray_runtime):
    from sbc_onnx.compress.numerics import damped_hessian, damped_inverse
    from sbc_onnx.compress.obs import SOLVE_BLOCK, masked_solve, solve_blocks
    from sbc_onnx.compress.threads import run_blocks_with
    from sbc_onnx.distributed.tasks import BlocksOnCluster

    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 90))
    Hinv, rd, _ = damped_inverse(X.T @ X, 0.01)
    Hd, _ = damped_hessian(X.T @ X, rd)
    W, mask = rng.standard_normal((3 * SOLVE_BLOCK + 5, 90)), rng.random((3 * SOLVE_BLOCK + 5, 90)) < 0.6
    spans = [(r, min(W.shape[0], r + SOLVE_BLOCK)) for r in range(0, W.shape[0], SOLVE_BLOCK)]
    runner = BlocksOnCluster(0.0, 1.0)
    pids = runner(lambda r0, r1: [os.getpid()] * (r1 - r0), (), spans, 1e9)  # a lambda travels by value
    assert len(pids) == len(spans) and os.getpid() not in set(np.concatenate(pids))  # they ran in workers
    with run_blocks_with(runner):
        got = masked_solve(W, Hd, mask, Hinv)
    np.testing.assert_array_equal(got, masked_solve(W, Hd, mask, Hinv))
    np.testing.assert_array_equal(got, solve_blocks(W, Hd, mask, Hinv, 0, W.shape[0]))


def test_cluster_errors_become_one_sbc_error_and_task_errors_stay(ray_runtime):
    """A lost node, object or worker (retries used up) is one SbcError line naming the resume folder; an error
    of the task's own code (e.g. an SbcError about the data) reaches the caller as it is."""
    from sbc_onnx.distributed import connect
    from sbc_onnx.errors import SbcError

    cluster = connect(workers=2)
    exc = ray_runtime.exceptions
    for lost in (exc.WorkerCrashedError(), exc.RaySystemError("connection lost"), exc.NodeDiedError("node gone")):
        with pytest.raises(SbcError, match="Ray cluster was lost") as e, cluster.lost():
            raise lost
        assert "\n" not in str(e.value) and "--resume" in str(e.value)

    def bad():
        raise SbcError("layer x: its input never spiked")

    with pytest.raises(SbcError, match="never spiked") as e:
        cluster.get(ray_runtime.remote(bad).remote())
    assert type(e.value) is SbcError


def test_sequential_and_resume_on_two_workers(ray_runtime, sew, tmp_path, monkeypatch):
    """--sequential (layers one after another, each calibrated in shards behind the compressed ones) gives the
    single-process result; a run interrupted after layer 2 and resumed on the workers skips what is done."""
    from sbc_onnx.pipeline import STOP_AFTER_ENV

    g, data, kw, single = sew
    seq = {**kw, "sequential": True}
    assert_same_result(compress(g, data, **seq)[0], compress(g, data, workers=2, **seq)[0])
    monkeypatch.setenv(STOP_AFTER_ENV, "2")
    with pytest.raises(KeyboardInterrupt):
        compress(g, data, workers=2, resume=tmp_path / "work", **kw)
    monkeypatch.delenv(STOP_AFTER_ENV)
    done = []
    out, rep = compress(g, data, workers=2, resume=tmp_path / "work", on_layer=lambda i, n, name: done.append(i),
                        **kw)
    assert done == list(range(3, len(rep.layers)))  # layers 0-2 restored, not computed again
    assert_same_result(single, out)


def test_object_store_bytes_and_task_seconds_are_recorded(ray_runtime, cnn):
    """CompressionReport.distributed: per layer the bytes of the arrays put and got (from the arrays), one
    seconds entry per task; the sharded calibration's sums per layer; and the projection from them."""
    import math

    from sbc_onnx.calibrate import shard_sums
    from sbc_onnx.compress import group_blocks
    from sbc_onnx.distributed import connect
    from sbc_onnx.distributed.layers import chunk_rows
    from sbc_onnx.distributed.projection import project
    from sbc_onnx.distributed.traffic import nbytes

    g, data, walker, single = cnn
    _, rep = compress(g, data, calibration=single, sparsity=0.5, method="sbc", batch_size=1, measure_damage=False,
                      workers=2)
    fg = flatten(g)
    rec = rep.distributed
    assert rec["workers"] == 2 and set(rec["layers"]) == set(fg.weight_nodes())
    for name, r in rec["layers"].items():
        W = np.asarray(fg.nodes[name].weight)
        W = W.reshape(W.shape[0], -1)
        groups = single.layers[name].groups
        d_in = W.shape[1] // groups
        b = r["bytes"]
        assert (b["put_W"], b["put_H"], b["get_W_layer"]) == (W.nbytes, single.layers[name].H.nbytes, W.nbytes)
        chunks = sum(math.ceil((rows.stop - rows.start) / chunk_rows(rows.stop - rows.start, cols.stop - cols.start))
                     for _, rows, cols in group_blocks(W.shape, groups))
        assert r["chunks"] == chunks == len(r["seconds"]["chunks"]) and len(r["seconds"]["inverse"]) == groups
        assert b["put_inverse"] == groups * d_in * d_in * 4  # float32 H^-1 per group
        assert b["get_W_chunks"] == chunks * W.nbytes
        assert b["put_chunk_results"] > 0 and b["get_result"] >= W.nbytes  # the new weights come back
        assert r["put"] == sum(v for k, v in b.items() if k.startswith("put_"))
    cluster = connect(workers=2)
    cluster.calibrate(walker, data, layers=list(single.layers), objective="smp", batch_size=1, input_norms=True)
    cal = cluster.calibration_records[-1]
    assert len(cal["shard_seconds"]) == 2
    for n in single.layers:  # two shards, each the same arrays as one pass's sums
        assert cal["shard_sums_by_layer"][n] == 2 * nbytes(shard_sums(single)["layers"][n])
    p1, p8 = project({**rec, "calibration": [cal]}, [1, 8], bandwidth=1e9, task_overhead=1e-3)
    assert p1.seconds >= p8.seconds >= p8.critical_path and p8.calibration > 0


def test_projection_model():
    """T(N) = max(C, S/N) + n o / N + D / B + G(N) / (N B), from two hand-made layer records; a chunk's shared
    H^-1 and W cross the network once per node at most."""
    from sbc_onnx.distributed.projection import project

    def layer(inv, chunks, task, blocks, driver, tasks_bytes, per_chunk):
        b = {"put_W": driver // 2, "put_H": driver - driver // 2 - 10, "put_sq_norms": 0, "get_result": 10,
             "put_inverse": tasks_bytes, "get_inverse_chunks": per_chunk * len(chunks)}
        return {"bytes": b, "put": driver - 10 + tasks_bytes, "get": 10 + per_chunk * len(chunks),
                "chunks": len(chunks),
                "seconds": {"inverse": inv, "chunks": chunks, "layer_task": task, "solve_blocks": blocks}}

    rec = {"layers": {"a": layer([1.0], [2.0, 3.0, 4.0], 5.0, [], 1000, 500, 70),
                      "b": layer([0.5], [1.0], 1.0, [2.0, 2.5], 3000, 1500, 30)}}
    S, C, n, D = 1 + 9 + 5 + 0.5 + 1 + 1 + 4.5, 1 + 4 + 5, 5 + 5, 4000
    for p in project(rec, [1, 2, 8, 128], bandwidth=100.0, task_overhead=0.1):
        N = p.workers
        G = 2000 + 70 * min(3, N) + 30
        assert p.seconds == pytest.approx(max(C, S / N) + n * 0.1 / N + D / 100 + G / (N * 100))
        assert p.bound == ("critical path" if C >= S / N else "work")
