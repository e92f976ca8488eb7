"""SIGINT and SIGTERM stop `compress` cleanly (issue #14): during the calibration and during the write of the
output, the command exits non-zero (130 / 143) with one line, leaves no file beside the output (not even the
hidden temporary one) and does not touch its inputs.

Each case runs the real command in its own process. "During the write" is hit through the test pause of
io/atomic.py: every write waits that long after writing its temporary file, which the test sees appear."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sbc_onnx.io.atomic import TEST_PAUSE_ENV

ROOT = Path(__file__).resolve().parents[1]
# `python -m sbc_onnx ARGS` with SIGINT raising KeyboardInterrupt, as in an interactive shell (a shell that runs
# the tests in the background starts them with SIGINT ignored, and the command would inherit that)
RUN_WITH_SIGINT = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                   "sys.argv[0] = 'sbc-onnx'; runpy.run_module('sbc_onnx', run_name='__main__')")
CODES = {signal.SIGINT: (130, "interrupted"), signal.SIGTERM: (143, "terminated")}


@pytest.fixture(scope="module")
def inputs(tiny_lif_files, tmp_path_factory):
    """The tiny model and a calibration set long enough that calibration lasts a while."""
    from sbc_onnx.data import Dataset, save_dataset

    rng = np.random.default_rng(0)
    save_dataset(Dataset((rng.random((512, 1000, 4)) < 0.3).astype(np.uint8), rng.integers(0, 3, 512)),
                 tiny_lif_files / "long.npz")
    return tiny_lif_files


def _start(files: Path, out: Path, calib: str, pause: float | None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop(TEST_PAUSE_ENV, None)
    if pause is not None:
        env[TEST_PAUSE_ENV] = str(pause)
    cmd = [sys.executable, "-c", RUN_WITH_SIGINT, "compress", str(files / "m.nir"), "--calib", str(files / calib),
           "-o", str(out), "--sparsity", "0.5", "--method", "magnitude"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(what, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not what():
        if proc.poll() is not None:
            pytest.fail(f"the command ended (exit {proc.returncode}) before the signal: {proc.stderr.read()}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail("the phase to interrupt never came")
        time.sleep(0.02)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("phase", ["calibration", "write"])
def test_signal_stops_compress_cleanly(inputs, tmp_path, sig, phase):
    out = tmp_path / "o.nir"
    before = {p.name: p.read_bytes() for p in inputs.iterdir()}
    if phase == "calibration":
        proc = _start(inputs, out, "long.npz", None)
        _wait_for(lambda: "[1/3] calibrating" in proc.stderr.readline(), proc)
        time.sleep(0.3)  # inside the walker's loop, not at its first line
    else:
        proc = _start(inputs, out, "c.npz", 3.0)
        _wait_for(lambda: any(tmp_path.glob(".o.nir.*.tmp")), proc)
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the command did not stop")
    code, word = CODES[sig]
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1] == word and "Traceback" not in err, err
    if phase == "calibration":
        assert "[2/3]" not in err  # stopped inside the calibration, not after it
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither the output nor its temporary file
    assert {p.name: p.read_bytes() for p in inputs.iterdir()} == before


@pytest.fixture
def sigint_raises():
    """SIGINT raising KeyboardInterrupt in this process, as in an interactive one (a background shell
    starts the tests with SIGINT ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_signal_held_during_a_write_in_process(tmp_path, sigint_raises):
    """In the library: a SIGINT during `write_atomic` is acted on once the writer returns, even when the
    writer swallows exceptions the way h5py's C callbacks do (print and go on): a KeyboardInterrupt, the
    target keeps its old content, no temporary file, and the handlers are restored."""
    from sbc_onnx.io.atomic import write_atomic

    target = tmp_path / "t.txt"
    target.write_text("old")

    def writer(tmp: Path) -> None:
        tmp.write_text("new")
        try:
            os.kill(os.getpid(), signal.SIGINT)  # arrives in the middle of the write
            time.sleep(0.05)
        except KeyboardInterrupt:
            pass  # what a C callback does with it
        tmp.write_text("newer")  # the writer finishes

    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, writer)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    write_atomic(target, lambda tmp: tmp.write_text("new"))
    assert target.read_text() == "new"
