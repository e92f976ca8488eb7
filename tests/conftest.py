"""Shared fixtures: where the read-only real data lives (../shared beside the checkout, or $SBC_SHARED)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SBC_SHARED", ROOT.parent / "shared")).resolve()  # CI passes a relative path
DATA = SHARED / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"shared data not found at {DATA}")
    return DATA


@pytest.fixture(scope="module")
def tiny_lif_files(tmp_path_factory) -> Path:
    """A two-layer LIF model m.nir (4 inputs, 3 outputs; dt stored in the file) and a 16-sample spike
    dataset c.npz, for fast CLI tests."""
    import numpy as np

    import sbc_onnx as sbc
    from sbc_onnx.data import Dataset, save_dataset
    from topologies import ALL, DT

    d = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    graph, _ = ALL["sequential"](rng)
    sbc.save_model(graph, d / "m.nir", cfg=sbc.SimConfig(dt=DT))
    save_dataset(Dataset((rng.random((16, 30, 4)) < 0.3).astype(np.uint8), rng.integers(0, 3, 16)), d / "c.npz")
    return d
