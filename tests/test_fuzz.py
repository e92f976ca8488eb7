"""Property-based tests (hypothesis) of the input boundary (issue #14): random or mutated model files,
datasets and option values never end in a traceback or a hang, and invalid input never ends in exit 0.

The number of examples and the per-example deadline are bounded so that each test takes a few seconds; the
runs are derandomized, so CI sees the same examples every time. SBC_FUZZ_EXAMPLES=500 searches longer."""

from __future__ import annotations

import math
import os
import tempfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sbc_onnx as sbc
from sbc_onnx.cli import main
from sbc_onnx.data import Dataset, load_dataset
from sbc_onnx.errors import SbcError

FUZZ = settings(max_examples=int(os.environ.get("SBC_FUZZ_EXAMPLES", "25")), deadline=timedelta(seconds=10),
                derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def files(tiny_lif_files):
    sbc.save_model(sbc.load_model(tiny_lif_files / "m.nir"), tiny_lif_files / "m.onnx",
                   cfg=sbc.SimConfig.from_graph(sbc.load_model(tiny_lif_files / "m.nir")))
    return tiny_lif_files


def _scratch(suffix: str, data: bytes) -> Path:
    with tempfile.NamedTemporaryFile(suffix=suffix, delete=False) as f:
        f.write(data)
    return Path(f.name)


def _mutate(raw: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    """`raw` with bytes overwritten at (position mod length, value) and optionally truncated."""
    b = bytearray(raw)
    for pos, val in edits:
        b[pos % len(b)] = val
    return bytes(b[:cut]) if cut is not None else bytes(b)


MUTATIONS = {"edits": st.lists(st.tuples(st.integers(0, 10**7), st.integers(0, 255)), min_size=1, max_size=8),
             "cut": st.one_of(st.none(), st.integers(0, 4000))}


def _load_or_refuse(path: Path):
    """load_model either returns a graph whose parameters are all finite, or raises SbcError."""
    try:
        graph = sbc.load_model(path)
    except SbcError:
        return None
    from sbc_onnx.graph import flatten

    for node in flatten(graph).nodes.values():
        for f in ("weight", "bias", "tau", "r", "v_threshold", "v_leak", "v_reset"):
            v = getattr(node, f, None)
            if isinstance(v, np.ndarray) and v.dtype.kind == "f":
                assert np.all(np.isfinite(v)), (type(node).__name__, f)
    return graph


# ------------------------------------------------------------------------------------------------ models

@pytest.mark.parametrize("ext", [".nir", ".onnx"])
@FUZZ
@given(**MUTATIONS)
def test_mutated_model_file_is_read_or_refused(files, ext, edits, cut):
    path = _scratch(ext, _mutate((files / f"m{ext}").read_bytes(), edits, cut))
    try:
        _load_or_refuse(path)
    finally:
        path.unlink()


PARAM_VALUES = st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -1e-3, 1e300, -5.0, 2e-3])


@FUZZ
@given(ext=st.sampled_from(["nir", "onnx"]), node=st.sampled_from(["a1", "l1", "a2", "l2"]),
       value=PARAM_VALUES, index=st.integers(0, 100), field=st.sampled_from(["weight", "bias", "tau", "v_threshold"]))
def test_changed_parameter_is_accepted_only_if_valid(files, ext, node, value, index, field):
    """One parameter set to an arbitrary value: `inspect` exits 0 exactly when every parameter is finite and
    every time constant positive (the independent rule), else 2 with one line."""
    import warnings

    graph = sbc.load_model(files / "m.nir")
    target = graph.nodes[node]
    if not hasattr(target, field):
        return
    arr = getattr(target, field)
    arr.reshape(-1)[index % arr.size] = value
    valid = math.isfinite(value) and (field != "tau" or value > 0)
    with tempfile.TemporaryDirectory() as d:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = sbc.save_model(graph, Path(d) / f"m.{ext}", cfg=sbc.SimConfig(dt=1e-4))
        code = main(["inspect", str(path)])
    assert code == (0 if valid else 2)


# ------------------------------------------------------------------------------------------------ datasets

DTYPES = st.sampled_from([np.uint8, np.int16, np.float32, np.float64, np.bool_, np.int64])


def _set(a: dict, index: tuple, value: float) -> None:
    a["x"] = a["x"].astype(np.float32)
    a["x"][index] = value


DEFECTS = {  # one way each to break a valid dataset for the 4-input, 3-class model
    "nan": lambda a: _set(a, (0, 0, 0), np.nan),
    "inf": lambda a: _set(a, (-1, -1, -1), -np.inf),
    "t0": lambda a: a.update(x=a["x"][:, :0]),
    "label3": lambda a: a["y"].__setitem__(0, 3),
    "label-1": lambda a: a["y"].__setitem__(-1, -1),
    "swap": lambda a: a.update(x=np.swapaxes(a["x"], 0, 1).copy()),
    "layout": lambda a: a.update(x=a["x"].reshape(a["x"].shape[:2] + (2, 2))),
    "width": lambda a: a.update(x=np.concatenate([a["x"], a["x"][..., :1]], axis=-1)),
    "short_y": lambda a: a.update(y=a["y"][:-1]),
    "y2d": lambda a: a.update(y=a["y"][:, None]),
    "no_y": lambda a: a.pop("y"),
    "lengths": lambda a: a.update(lengths=np.full(a["x"].shape[0], a["x"].shape[1] + 1)),
    "x_scale": lambda a: a.update(x_scale=np.array(np.nan)),
    "repeat": lambda a: a.update(repeat_steps=np.array(0)),
    "meta": lambda a: a.update(meta=np.array("{")),
}


@st.composite
def raw_dataset(draw, first: str | None):
    """A valid dataset (random size, dtype and values) with the defect `first` and maybe one more; returns
    (arrays, defects)."""
    n, t = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    dtype = draw(DTYPES)
    values = draw(st.lists(st.sampled_from([0, 1, 2, 0.5]), min_size=n * t * 4, max_size=n * t * 4))
    x = np.asarray(values, np.float64).reshape(n, t, 4)
    x = x.astype(dtype) if dtype in (np.float32, np.float64) else np.round(x).astype(dtype)
    arrays = {"x": x, "y": np.asarray(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)))}
    defects = [first] if first else []
    defects += draw(st.lists(st.sampled_from(sorted(set(DEFECTS) - set(defects))), max_size=1))
    for d in sorted(defects, key=lambda d: (d == "no_y", d not in ("nan", "inf", "label3", "label-1"))):
        # values first, then shapes, dropping y last: each defect still finds what it changes
        DEFECTS[d](arrays)
    return arrays, defects


def _valid_for_the_model(a: dict) -> bool:
    """Independent rule: eval of the 4-input, 3-class model may succeed only on this."""
    if set(a) != {"x", "y"}:
        return False
    x, y = a["x"], a["y"]
    return (x.ndim == 3 and x.shape[2:] == (4,) and y.ndim == 1 and x.shape[0] == y.shape[0] >= 1
            and x.shape[1] >= 1 and (x.dtype.kind != "f" or bool(np.all(np.isfinite(x))))
            and bool(np.all((y >= 0) & (y <= 2))))


@settings(FUZZ, max_examples=max(2, FUZZ.max_examples // 5))
@pytest.mark.parametrize("first", [None, *sorted(DEFECTS)])
@given(data=st.data())
def test_random_dataset_is_loaded_or_refused(files, capsys, first, data):
    """A valid dataset with random defects: loaded only if usable, and `eval` exits 0 exactly when it is valid
    for the model, else 2 with one `error:` line."""
    arrays, defects = data.draw(raw_dataset(first))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "d.npz"
        np.savez(path, **arrays)
        try:
            ds = load_dataset(path)
        except SbcError:
            ds = None
        if ds is not None:  # what was accepted is usable: finite, T >= 1, one integer label per sample
            assert ds.steps >= 1 and ds.y.shape == (ds.n,) and ds.y.dtype.kind in "iu"
            assert ds.x.dtype.kind != "f" or np.all(np.isfinite(ds.x))
        capsys.readouterr()
        code = main(["eval", str(files / "m.nir"), "--data", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == (0 if _valid_for_the_model(arrays) else 2), (defects, err)
    if code == 2:
        assert len(err) == 1 and err[0].startswith("error: "), err


# ------------------------------------------------------------------------------------------------ options

def _number_text():
    return st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers(-10, 10**6).map(str),
                     st.sampled_from(["nan", "-inf", "inf", "1e400", "", "0x10", "1_0", " 3", "1e-400", "½"]),
                     st.text(max_size=6))


def _float(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None


def _int(s: str) -> int | None:
    try:
        return int(s)
    except ValueError:
        return None


TINY_TAU = 2e-3  # tests/topologies.py _lif default, the tiny_lif_files model's neurons

OPTION_RULES = {  # option -> (parse, valid value): the documented ranges
    # the tiny model's LIF neurons (tau = 2 ms) step under Euler only with dt <= tau
    "--dt": (_float, lambda v: math.isfinite(v) and 0 < v <= TINY_TAU),
    "--limit": (_int, lambda v: v >= 1),
    "--start": (_int, lambda v: 0 <= v < 16),  # past the 16 samples: "no samples"
    "--batch-size": (_int, lambda v: v >= 1),
}


@FUZZ
@given(option=st.sampled_from(sorted(OPTION_RULES)), text=_number_text())
def test_numeric_option_values(files, capsys, option, text):
    """Any text as a numeric option of `eval`: exit 0 exactly for the documented range, else 2 with one
    `error:` line naming the option (or the empty selection)."""
    parse, ok = OPTION_RULES[option]
    value = parse(text)
    valid = value is not None and ok(value)
    capsys.readouterr()
    code = main(["eval", str(files / "m.nir"), "--data", str(files / "c.npz"), f"{option}={text}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == (0 if valid else 2), (text, err)
    if not valid:
        assert len(err) == 1 and err[0].startswith("error: ") and (option in err[0] or "start" in err[0])


COMPRESS_RULES = {  # option -> (parse, valid value); the other options stay at valid values
    "--sparsity": (_float, lambda v: math.isfinite(v) and 0 <= v < 1),
    "--damp": (_float, lambda v: math.isfinite(v) and v >= 0),
    "--lamp-p": (_float, lambda v: math.isfinite(v) and v > 0),
    "--bits": (_int, lambda v: 2 <= v <= 8),
    "--calib-limit": (_int, lambda v: v >= 1),
}


@FUZZ
@given(option=st.sampled_from(sorted(COMPRESS_RULES)), text=_number_text())
def test_compress_options_refused_before_any_work(files, capsys, option, text):
    """Any text as one numeric option of `compress`: outside its range, exit 2 in click's check before the
    model is loaded (one line, no output); inside, the command runs (exit 0, output written)."""
    parse, ok = COMPRESS_RULES[option]
    value = parse(text)
    valid = value is not None and ok(value)
    base = {"--sparsity": "0.5", "--damp": "0.01", "--lamp-p": "2", "--bits": "4", "--calib-limit": "8"}
    args = [f"{k}={text if k == option else v}" for k, v in base.items()]
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "o.nir"
        capsys.readouterr()
        code = main(["compress", str(files / "m.nir"), "--calib", str(files / "c.npz"), "-o", str(out),
                     "--method", "magnitude", *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == (0 if valid else 2), (option, text, err)
        assert out.exists() == valid
    if not valid:
        assert len(err) == 1 and err[0].startswith(f"error: Invalid value for '{option}'"), err


def test_dataset_nan_guard_unit():
    """The guard the dataset fuzz leans on, named: NaN/inf in x is refused."""
    with pytest.raises(SbcError, match="NaN/inf"):
        Dataset(np.array([[[np.nan]]]), [0])
