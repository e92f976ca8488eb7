"""Quiet, truthful output (issue #14): progress bars only on a terminal, each note once, table columns that
say what they time, and `--force` keeping the replaced file's mode."""

from __future__ import annotations

import os
import stat

import pytest

from sbc_onnx import progress
from sbc_onnx.cli import main


@pytest.fixture(scope="module")
def files(tiny_lif_files):
    return tiny_lif_files


def test_no_progress_bar_when_stderr_is_not_a_terminal(files, capsys):
    assert main(["eval", str(files / "m.nir"), "--data", str(files / "c.npz")]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "%|" not in err
    assert len(err.strip().splitlines()) == 1  # the one line of the phase


def test_progress_bar_on_a_terminal(files, capsys, monkeypatch):
    monkeypatch.setattr(progress, "on_terminal", lambda: True)
    assert main(["eval", str(files / "m.nir"), "--data", str(files / "c.npz")]) == 0
    assert "simulating:" in capsys.readouterr().err


def test_each_note_is_printed_once(files, tmp_path, capsys):
    """One calibration sample for 4 live inputs: the rank-deficient note, once (not logged and reported)."""
    out = tmp_path / "o.nir"
    assert main(["compress", str(files / "m.nir"), "--calib", str(files / "c.npz"), "-o", str(out),
                 "--sparsity", "0.5", "--method", "magnitude", "--calib-limit", "1"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert any("rank-deficient" in n for n in notes), notes
    assert len(notes) == len(set(notes)), notes


def test_table_columns_time_what_they_say(files):
    """`hess s` is the layer's Hessian time (part of calibration), `comp s` its compression time; the
    compression total printed below the table covers the `comp s` column."""
    import dataclasses

    import sbc_onnx as sbc
    from sbc_onnx.pipeline import Plan

    graph = sbc.load_model(files / "m.nir")
    _, report = sbc.compress(graph, sbc.load_dataset(files / "c.npz"), Plan.build(sparsity=0.5, method="magnitude"),
                             cfg=sbc.SimConfig.from_graph(graph))
    assert sum(r.seconds for r in report.layers) <= report.seconds["compression"] + 1e-9
    layers = [dataclasses.replace(r, seconds=1.25 + i, hessian_seconds=3.5 + i) for i, r in enumerate(report.layers)]
    lines = dataclasses.replace(report, layers=layers).table().splitlines()
    head = lines[0].split()
    hess, comp = head.index("hess"), head.index("comp") - 1  # "hess s" and "comp s" are two words each
    for r, line in zip(layers, lines[2:]):
        cells = line.split()
        assert (float(cells[hess]), float(cells[comp])) == (r.hessian_seconds, r.seconds)


def test_force_keeps_the_mode_of_the_replaced_file(files, tmp_path):
    out = tmp_path / "o.nir"
    args = ["compress", str(files / "m.nir"), "--calib", str(files / "c.npz"), "-o", str(out), "--sparsity", "0.5",
            "--method", "magnitude"]
    assert main(args) == 0
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask  # a new file: as open() makes it
    out.chmod(0o640)
    assert main([*args, "--force"]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
