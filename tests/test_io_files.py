"""Files written through the one I/O boundary: atomic writes honour the umask and keep a replaced file's
mode, a failed write leaves nothing behind, and a model file gets its simulation settings stamped once,
on save."""

from __future__ import annotations

import os
import stat
import warnings

import nir
import numpy as np
import onnx
import pytest

from sbc_onnx.bridges import write_nir_legacy
from sbc_onnx.data import Dataset, save_dataset
from sbc_onnx.errors import SbcError
from sbc_onnx.io.atomic import write_atomic, write_bytes_atomic
from sbc_onnx.io.models import load_model, save_model
from sbc_onnx.io.nir_io import write_nir
from sbc_onnx.io.onnx_io import ort_session, read_onnx, run_onnxruntime, update_onnx, write_onnx
from sbc_onnx.sim import SimConfig, Walker
from sbc_onnx.sim.config import META_KEYS

from topologies import ALL


def small_graph() -> nir.NIRGraph:
    return ALL["sequential"](np.random.default_rng(0))[0]


def small_dataset() -> Dataset:
    rng = np.random.default_rng(0)
    return Dataset(rng.random((4, 6, 3)) < 0.5, rng.integers(0, 2, 4))


# every writer of the package that produces a file (name, function(path))
WRITERS = {
    "nir": lambda p: write_nir(small_graph(), p),
    "onnx": lambda p: write_onnx(small_graph(), p, cfg=SimConfig(dt=1e-3)),
    "npz": lambda p: save_dataset(small_dataset(), p),
    "legacy.nir": lambda p: write_nir_legacy(small_graph(), p),
}


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    old = os.umask(0o022)
    try:
        yield lambda mask: os.umask(mask)
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def leftovers(directory, keep=()) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_new_file_mode_follows_the_umask(tmp_path, umask, kind):
    umask(0o022)
    WRITERS[kind](tmp_path / f"a.{kind}")
    assert mode(tmp_path / f"a.{kind}") == 0o644  # what open() gives; mkstemp would give 0600
    umask(0o027)
    WRITERS[kind](tmp_path / f"b.{kind}")
    assert mode(tmp_path / f"b.{kind}") == 0o640
    assert leftovers(tmp_path) == sorted([f"a.{kind}", f"b.{kind}"])  # no temporary file left


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_replaced_file_keeps_its_mode(tmp_path, umask, kind):
    umask(0o022)
    target = tmp_path / f"m.{kind}"
    target.write_bytes(b"old")
    os.chmod(target, 0o604)
    WRITERS[kind](target)
    assert mode(target) == 0o604
    assert target.read_bytes() != b"old"


def test_writers_never_touch_the_umask(tmp_path, monkeypatch):
    """Reading the umask means setting it, which changes it for every thread of the process meanwhile."""
    def no_umask(mask):
        raise AssertionError("os.umask called while writing")

    monkeypatch.setattr(os, "umask", no_umask)
    for kind, write in WRITERS.items():
        write(tmp_path / f"t.{kind}")


def test_failed_writer_leaves_no_file(tmp_path):
    def half_then_fail(tmp):
        tmp.write_bytes(b"partial")
        raise ValueError("disk on fire")

    with pytest.raises(SbcError, match=r"could not write .*new\.bin: ValueError: disk on fire"):
        write_atomic(tmp_path / "new.bin", half_then_fail)
    (tmp_path / "old.bin").write_bytes(b"keep me")
    with pytest.raises(SbcError):
        write_atomic(tmp_path / "old.bin", half_then_fail)
    assert (tmp_path / "old.bin").read_bytes() == b"keep me"  # the old file is untouched
    with pytest.raises(KeyboardInterrupt):  # an interrupt is not an SbcError, and cleans up too
        write_atomic(tmp_path / "new.bin", lambda tmp: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert leftovers(tmp_path) == ["old.bin"]


def test_failed_rename_leaves_no_file(tmp_path):
    (tmp_path / "dir.onnx").mkdir()  # the target is a directory: the final rename fails
    with pytest.raises(SbcError, match="could not write"):
        write_bytes_atomic(tmp_path / "dir.onnx", b"model")
    with pytest.raises(SbcError, match="could not write"):
        write_onnx(small_graph(), tmp_path / "dir.onnx")
    assert leftovers(tmp_path) == ["dir.onnx"] and not any((tmp_path / "dir.onnx").iterdir())


def test_failed_nir_verification_leaves_no_file(tmp_path):
    """write_nir reads the file back type-checked before it replaces the target."""
    g = nir.NIRGraph(nodes={"input": nir.Input(np.array([3])), "a": nir.Linear(weight=np.ones((2, 4))),
                            "output": nir.Output(np.array([2]))},
                     edges=[("input", "a"), ("a", "output")], type_check=False)
    with pytest.raises(SbcError, match=r"could not write .*bad\.nir"):
        write_nir(g, tmp_path / "bad.nir")
    assert leftovers(tmp_path) == []


def test_failed_dataset_write_leaves_no_file(tmp_path, monkeypatch):
    def savez_fails(f, **arrays):
        f.write(b"PK partial")
        raise OSError("no space left on device")

    monkeypatch.setattr(np, "savez_compressed", savez_fails)
    with pytest.raises(SbcError, match="no space left"):
        save_dataset(small_dataset(), tmp_path / "d.npz")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", sorted(set(WRITERS) - {"npz"}))  # save_dataset creates the folders
def test_missing_directory_is_one_clear_error(tmp_path, kind):
    with pytest.raises(SbcError, match="output directory does not exist"):
        WRITERS[kind](tmp_path / "no" / f"x.{kind}")


# ---- simulation settings: stamped once, by the writer, from cfg -----------------------------------------
CFG = SimConfig(dt=2e-4, integrator="exact", reset="subtract", cuba_order="previous_current")


def test_save_model_nir_stamps_cfg_over_metadata(tmp_path):
    g = small_graph()
    g.metadata = {"dt": 1.0, "reset": "to_v_reset", "origin": "test"}
    save_model(g, tmp_path / "g.nir", cfg=CFG, metadata={"integrator": "euler", "note": "n"})
    back = load_model(tmp_path / "g.nir")
    assert SimConfig.from_graph(back) == CFG  # cfg wins over the graph's and the caller's metadata
    assert back.metadata["origin"] == "test" and back.metadata["note"] == "n"
    # without cfg the metadata is written as given (nothing invented)
    save_model(small_graph(), tmp_path / "plain.nir", metadata={"note": "n"})
    assert not set(META_KEYS) & set(load_model(tmp_path / "plain.nir").metadata)


def test_save_model_onnx_bakes_and_stamps_cfg_once(tmp_path):
    g = small_graph()
    g.metadata = {"dt": 1.0, "reset": "to_v_reset"}
    path = save_model(g, tmp_path / "g.onnx", cfg=CFG, metadata={"integrator": "euler", "note": "n"})
    model = onnx.load(str(path))
    keys = [p.key for p in model.metadata_props]
    assert sorted(k for k in keys if k in META_KEYS) == sorted(META_KEYS)  # each exactly once
    assert SimConfig.from_graph(read_onnx(path)) == CFG
    dt_node = next(n for n in model.graph.node if n.output[0] == "snn/dt")
    assert onnx.numpy_helper.to_array(dt_node.attribute[0].t) == CFG.dt  # the metadata says what runs
    assert read_onnx(path).metadata["note"] == "n"


def _run(path, x):
    return run_onnxruntime(ort_session(path), {"input": x})["output"]


def test_save_model_updates_onnx_source_only_with_its_own_settings(tmp_path):
    src = write_onnx(small_graph(), tmp_path / "src.onnx", cfg=CFG)
    marked = onnx.load(str(src))
    marked.producer_version = "from another tool"  # a field only an in-place update keeps
    onnx.save(marked, str(src))
    g = read_onnx(src)
    g.nodes["a2"].weight = g.nodes["a2"].weight * 0.5  # "compressed"
    # same settings: the source is updated in place (weights and metadata rewritten, the rest kept)
    same = save_model(g, tmp_path / "same.onnx", cfg=SimConfig.from_graph(g), source=src, metadata={"k": 1})
    assert onnx.load(str(same)).producer_version == "from another tool"
    np.testing.assert_array_equal(read_onnx(same).nodes["a2"].weight, g.nodes["a2"].weight)
    assert read_onnx(same).metadata["k"] == 1
    # other settings: the source's time step cannot express them, so a new file is built for them
    other = SimConfig(dt=1e-3)
    new = save_model(g, tmp_path / "new.onnx", cfg=other, source=src)
    assert onnx.load(str(new)).producer_version != "from another tool"
    assert SimConfig.from_graph(read_onnx(new)) == other
    x = (np.random.default_rng(1).random((30, 2, int(g.nodes["input"].output_type["output"][0]))) < 0.5)
    x = x.astype(np.float32)
    np.testing.assert_array_equal(_run(new, x), Walker(g, other).run(x).outputs["output"])
    assert not np.array_equal(_run(new, x), _run(same, x))  # the settings really differ in what runs


def test_update_onnx_keeps_the_files_settings(tmp_path):
    src = write_onnx(small_graph(), tmp_path / "src.onnx", cfg=CFG)
    out = update_onnx(src, read_onnx(src), tmp_path / "out.onnx", metadata={"dt": 0.5, "reset": "to_v_reset"})
    assert SimConfig.from_graph(read_onnx(out)) == CFG  # settings keys in metadata cannot contradict the Scan


def test_int_weights_only_for_onnx(tmp_path):
    with pytest.raises(SbcError, match="ONNX files only"):
        save_model(small_graph(), tmp_path / "g.nir", int_weights=True)
    assert leftovers(tmp_path) == []


def test_cli_convert_stamps_settings(tmp_path):
    from sbc_onnx.cli import main

    write_nir(small_graph(), tmp_path / "g.nir")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["convert", str(tmp_path / "g.nir"), str(tmp_path / "g.onnx"), "--dt", "2e-4",
                     "--integrator", "exact", "--reset", "subtract", "--cuba-order", "previous_current"]) == 0
        assert main(["convert", str(tmp_path / "g.onnx"), str(tmp_path / "back.nir")]) == 0
    for name in ("g.onnx", "back.nir"):
        g = load_model(tmp_path / name)
        assert SimConfig.from_graph(g) == CFG, name
    assert load_model(tmp_path / "back.nir").metadata["converted_from"] == "g.onnx"
