"""Readouts: spike counts with ties, tie-break by potential, potential of a non-spiking output; both engines."""

from __future__ import annotations

import numpy as np
import pytest

import sbc_onnx as sbc
from sbc_onnx.data import Dataset
from sbc_onnx.evaluate import BatchOutputs, score_batch
from sbc_onnx.io.onnx_io import evaluate_onnxruntime, write_onnx

from topologies import ALL, DT


def test_score_batch_rules():
    counts = {"s": np.array([[2, 2, 1], [0, 0, 0], [1, 3, 0]])}
    v = np.array([[0.1, 0.9, 0.0], [0.0, 0.0, 0.5], [0.0, 0.0, 0.0]])
    p, ties, silent = score_batch("count", "s", True, BatchOutputs(counts=counts))
    assert p.tolist() == [0, 0, 1] and ties == 2 and silent == 1  # ties -> lowest index
    p, _, _ = score_batch("count+potential", "s", True, BatchOutputs(counts=counts, source_v=v))
    assert p.tolist() == [1, 2, 1]  # potential only decides exact ties
    with pytest.raises(sbc.SbcError, match="non-spiking"):
        score_batch("potential", "s", True, BatchOutputs(counts=counts))


@pytest.mark.parametrize("name,readout", [("sequential", "count"), ("sequential", "count+potential"),
                                          ("recurrent_first", "potential")])
def test_engines_agree_on_readouts(tmp_path, name, readout):
    rng = np.random.default_rng(0)
    graph, ref = ALL[name](rng)
    n_in = graph.nodes["input"].output_type["output"][0]
    x = (rng.random((12, 25, n_in)) < 0.5).astype(np.uint8)
    ds = Dataset(x, rng.integers(0, 3, 12))
    cfg = sbc.SimConfig(dt=DT)
    res = sbc.evaluate(graph, ds, cfg, readout=readout, batch_size=5)
    if readout == "potential":  # the reference loop's last step, argmax
        expected = np.argmax(ref(np.swapaxes(x, 0, 1).astype(float))[-1], axis=1)
        assert res.predictions.tolist() == expected.tolist()
    path = write_onnx(graph, tmp_path / "g.onnx", cfg=cfg)
    ort = evaluate_onnxruntime(path, ds, readout=readout, batch_size=5)
    assert ort.predictions.tolist() == res.predictions.tolist()
    assert ort.firing_rates == pytest.approx(res.firing_rates)
