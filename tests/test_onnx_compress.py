"""Compressing an ONNX file through the CLI rewrites only the weights (in compact encodings) and metadata."""

from __future__ import annotations

import numpy as np
import onnx
from test_onnx import _strip

from sbc_onnx.cli import main
from sbc_onnx.data import Dataset, save_dataset
from sbc_onnx.graph import diff_graphs
from sbc_onnx.io.models import load_model
from sbc_onnx.io.onnx_io import read_onnx, write_onnx
from sbc_onnx.io.sizes import weight_storage
from sbc_onnx.sim import SimConfig


def test_cli_compress_onnx_in_place(data_dir, tmp_path, capsys):
    src = write_onnx(load_model(data_dir / "nir_paper/03_rnn/braille_noDelay_bias_zero.nir"),
                     tmp_path / "braille.onnx", cfg=SimConfig(dt=1e-4))
    rng = np.random.default_rng(0)
    save_dataset(Dataset((rng.random((16, 60, 12)) < 0.3).astype(np.uint8), rng.integers(0, 7, 16)),
                 tmp_path / "calib.npz")
    out = tmp_path / "braille_sbc.onnx"
    assert main(["compress", str(src), "--calib", str(tmp_path / "calib.npz"), "--sparsity", "0.6",
                 "--bits", "6", "-o", str(out)]) == 0
    capsys.readouterr()
    a, b = onnx.load(str(src)), onnx.load(str(out))
    weights = ["fc1.weight", "lif1.w_rec.weight", "fc2.weight"]
    assert _strip(a, weights) == _strip(b, weights)  # everything but the weights and metadata is identical
    storage = weight_storage(out)  # 6-bit weights: integer codes (int8 or sparse) + float32 scales
    assert {s.name for s in storage} == {"fc1", "lif1.w_rec", "fc2"}
    assert all(s.encoding in ("int", "sparse-int", "index-int") and s.stored_bytes * 2 < s.dense_bytes for s in storage), storage
    assert out.stat().st_size < src.stat().st_size
    meta = {p.key: p.value for p in b.metadata_props}
    # metadata encoded as write_onnx encodes it: strings as they are, numbers as JSON under nir.json.<key>
    assert meta["sbc_onnx.method"] == "sbc" and meta["nir.json.sbc_onnx.bits"] == "6"
    # the settings stay those baked into the file's time step, written once
    assert [(p.key, p.value) for p in b.metadata_props if p.key in ("dt", "integrator", "reset", "cuba_order")] \
        == [("dt", "0.0001"), ("integrator", "euler"), ("reset", "to_v_reset"), ("cuba_order", "current_first")]
    g_src, g_out = read_onnx(src), read_onnx(out)
    assert g_out.metadata["sbc_onnx.bits"] == 6 and g_out.metadata["sbc_onnx.method"] == "sbc"
    assert set(diff_graphs(g_src, g_out)) == {"fc1.weight differs", "lif1.w_rec.weight differs", "fc2.weight differs"}
    w = np.concatenate([g_out.nodes[n].weight.ravel() for n in ("fc1", "lif1.w_rec", "fc2")])
    assert np.mean(w == 0) >= 0.6 - 1e-3
    onnx.checker.check_model(b, full_check=True)
