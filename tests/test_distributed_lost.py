"""A lost Ray cluster (issue #15): `sbc-onnx compress --ray-address ... --resume DIR` ends with one `error:` line
and exit code 2, the folder keeps the layers finished (complete, nothing half-written), and a single-process
rerun with --resume gives the uninterrupted result.  A head of our own (`ray start --head` on loopback, a free
port, its own temp dir) is started here and its raylet SIGKILLed once two layers are saved; only processes this
test started are ended."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

import sbc_onnx as sbc
from sbc_onnx.cli import main
from sbc_onnx.distributed.cluster import ONE_THREAD_ENV
from sbc_onnx.distributed.tasks import HOLD_FROM_ENV

ROOT = Path(__file__).resolve().parents[1]
SEW = ROOT / "examples" / "models" / "sew_resnet_mnist.nir"
KEPT = 2  # layers saved before the cluster is killed (layer tasks from this index on are held)
ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT), **ONE_THREAD_ENV}


def _poll(cond, timeout: float, what: str, proc=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process ended first ({proc.returncode})")
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout} s")


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        out += [int(x) for x in task.read_text().split()]
    return out


def _exe_name(pid: int) -> str:
    try:
        return Path(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()).name
    except OSError:
        return ""


@pytest.fixture
def ray_head():
    """127.0.0.1:PORT of a one-node, two-CPU Ray head of this test's own; the `ray start --block` process."""
    pytest.importorskip("ray")
    ray_bin = Path(sys.executable).with_name("ray")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="sbc-ray-")  # short: Ray's socket paths live under it
    out = Path(temp) / "head.out"
    with open(out, "w") as f:
        head = subprocess.Popen([str(ray_bin), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port",
                                 str(port), "--num-cpus", "2", "--include-dashboard", "false", "--temp-dir", temp],
                                stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **ENV}, start_new_session=True)
    try:
        _poll(lambda: "Ray runtime started" in out.read_text(), 90, "ray start --head", head)
        yield f"127.0.0.1:{port}", head
    finally:
        if head.poll() is None:  # it ends the Ray processes it started when it stops
            head.send_signal(signal.SIGTERM)
            try:
                head.wait(30)
            except subprocess.TimeoutExpired:
                head.kill()
                head.wait()
        shutil.rmtree(temp, ignore_errors=True)


def test_lost_cluster_one_line_resume_keeps_finished_layers(ray_head, data_dir, tmp_path):
    if not SEW.is_file():
        pytest.skip(f"{SEW} is missing")
    address, head = ray_head
    data = sbc.load_mnist(data_dir / "mnist", start=5000, limit=4, steps=4, encoding="analog", shape=(1, 28, 28))
    sbc.data.save_dataset(data, tmp_path / "c.npz")
    work = tmp_path / "work"
    args = ["compress", str(SEW), "--calib", str(tmp_path / "c.npz"), "--sparsity", "0.5", "--batch-size", "2"]
    # Ray's own wait for a lost GCS, 60 s by default, shortened: the driver is ended after it all the same
    env = {**os.environ, **ENV, HOLD_FROM_ENV: str(KEPT), "RAY_gcs_rpc_server_reconnect_timeout_s": "3"}
    proc = subprocess.Popen([sys.executable, "-m", "sbc_onnx", *args, "-o", str(tmp_path / "lost.nir"),
                             "--ray-address", address, "--resume", str(work)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        _poll(lambda: len(list((work / "layers").glob("*.json"))) >= KEPT, 120, "the first layers saved", proc)
        raylets = [p for p in _children(head.pid) if _exe_name(p) == "raylet"]
        assert len(raylets) == 1
        os.kill(raylets[0], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2, stderr
    lines = stderr.strip().splitlines()
    log = lines[-1].rpartition("Ray's messages: ")[2]
    assert "Failed to connect to GCS" in Path(log).read_text()  # Ray's own exit, not an error of ours
    Path(log).unlink()
    assert [ln for ln in lines if ln.startswith("error:")] == lines[-1:], stderr
    assert lines[-1].startswith("error: the Ray cluster was lost"), lines[-1]
    assert f"the {KEPT} layer(s) finished are kept in {work}" in lines[-1]
    assert not [ln for ln in lines if re.search(r"\.(cc|h):\d+|Traceback", ln)], stderr  # Ray's own lines: in a file
    assert not (tmp_path / "lost.nir").exists()
    # the folder: exactly the finished layers, each complete, no temporary file of a write cut short
    records = sorted((work / "layers").glob("*.json"))
    assert len(records) == KEPT
    for rec in records:
        with np.load(rec.with_suffix(".npz")) as z:
            assert z["weight"].size > 0
    assert not list(work.rglob(".*.tmp"))
    # a single-process rerun on the folder finishes; its weights are the uninterrupted run's
    assert main([*args, "-o", str(tmp_path / "resumed.nir"), "--resume", str(work)]) == 0
    assert main([*args, "-o", str(tmp_path / "whole.nir")]) == 0
    a, b = (sbc.graph.flatten(sbc.load_model(tmp_path / f)) for f in ("resumed.nir", "whole.nir"))
    assert a.weight_nodes() == b.weight_nodes()
    for n in a.weight_nodes():
        np.testing.assert_array_equal(np.asarray(a.nodes[n].weight), np.asarray(b.nodes[n].weight), err_msg=n)
