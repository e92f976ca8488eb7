"""The bad-input cases of the command line, as data: one list used by tests/test_bad_input.py (in process,
every case) and by benchmarks/bad_input_table.py (each case in its own process, with a time limit, to
write docs/bad_input.md).

A case is a command line with placeholders and the files it needs. `{m}` / `{mo}` are the valid two-layer
LIF model as .nir / .onnx and `{c}` a valid 16-sample dataset for it (`make_base`); every other
`{name}` is a path in the case's own empty work directory, created by `files[name]` when the case lists
a builder for it (a missing builder means the path does not exist). Each case must end with `code`
(2: one `error:` line on stderr containing every needle), write nothing into its work directory, and
leave its inputs unchanged.
"""

from __future__ import annotations

import gzip
import json
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from topologies import ALL, DT

Builder = Callable[[Path], None]


@dataclass(frozen=True)
class Case:
    id: str
    group: str
    argv: tuple[str, ...]
    needles: tuple[str, ...]
    files: dict[str, Builder] = field(default_factory=dict)
    code: int = 2


# ----------------------------------------------------------------------------------------------- base files

N_CLASSES, N_IN = 3, 4


def _graph(rng=None):
    return ALL["sequential"](np.random.default_rng(0) if rng is None else rng)[0]


def _spikes(n=16, t=30, shape=(N_IN,), seed=0):
    return (np.random.default_rng(seed).random((n, t, *shape)) < 0.3).astype(np.uint8)


def make_base(d: Path) -> dict[str, Path]:
    """The valid model (.nir and .onnx) and dataset every case may refer to, in directory `d`."""
    import sbc_onnx as sbc
    from sbc_onnx.data import Dataset, save_dataset

    d.mkdir(parents=True, exist_ok=True)
    m = sbc.save_model(_graph(), d / "m.nir", cfg=sbc.SimConfig(dt=DT))
    mo = sbc.save_model(_graph(), d / "m.onnx", cfg=sbc.SimConfig(dt=DT))
    rng = np.random.default_rng(0)
    c = save_dataset(Dataset(_spikes(), rng.integers(0, N_CLASSES, 16)), d / "c.npz")
    return {"m": m, "mo": mo, "c": c}


def expand(case: Case, base: dict[str, Path], work: Path) -> list[str]:
    """The case's command line with every placeholder replaced; builds the files it lists in `work`."""
    names = {k: str(v) for k, v in base.items()}
    keys = [k for _, k, _, _ in string.Formatter().parse(" ".join(case.argv))] + list(case.files)
    for key in keys:
        if key and key not in names:
            names[key] = str(work / key.replace("_", "."))
    for key, build in case.files.items():
        build(Path(names[key]))
    return [a.format(**names) for a in case.argv]


# ----------------------------------------------------------------------------------------------- builders

def text(content: str | bytes) -> Builder:
    def build(p: Path) -> None:
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
    return build


def directory(p: Path) -> None:
    p.mkdir()


def npz(**arrays) -> Builder:
    """A raw .npz (np.savez, unchecked: the library's own writer refuses such content)."""
    def build(p: Path) -> None:
        with open(p, "wb") as f:
            np.savez(f, **{k: v() if callable(v) else v for k, v in arrays.items()})
    return build


def damaged_x(p: Path) -> None:
    """A valid dataset of 400 samples whose x member has bytes overwritten near its end: only reading x (a
    batch at a time, after the checks at load) finds it, through the zip CRC, in the middle of the run."""
    import zipfile

    npz(x=_spikes(n=400), y=_y(400))(p)
    with zipfile.ZipFile(p) as z:
        info = z.getinfo("x.npy")
    data = bytearray(p.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 128 + 40000  # sample 333
    data[start:start + 16] = bytes(b ^ 0x5A for b in data[start:start + 16])
    p.write_bytes(bytes(data))


def _y(n=16, hi=N_CLASSES):
    return np.arange(n) % hi


def _with(change: Callable[[np.ndarray], np.ndarray]):
    return lambda: change(_spikes().astype(np.float32))


def _nan(x):
    x[3, 4, 1] = np.nan
    return x


def _inf(x):
    x[0, 0, 0] = -np.inf
    return x


def model(ext: str, change: Callable) -> Builder:
    """The valid model with one change, written unchecked (the writers do not judge parameters)."""
    def build(p: Path) -> None:
        import warnings

        import sbc_onnx as sbc

        g = _graph()
        change(g)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the ONNX writer runs the bad model once
            sbc.save_model(g, p, cfg=sbc.SimConfig(dt=DT))
    return build


def setp(node: str, f: str, index, value) -> Callable:
    def change(g):
        getattr(g.nodes[node], f)[index] = value
    return change


def resized(node: str, shape: tuple[int, int]) -> dict[str, Builder]:
    """The valid model with the weight of `node` replaced by ones of another `shape`, as .nir and .onnx files
    written below the writers (which would refuse the mismatch)."""
    def nir_file(p: Path) -> None:
        import nir
        g = _graph()
        g.nodes[node].weight = np.ones(shape)
        nir.write(p, g)

    def onnx_file(p: Path) -> None:
        import onnx

        import sbc_onnx as sbc
        m = onnx.load(sbc.save_model(_graph(), p, cfg=sbc.SimConfig(dt=DT)))
        init = next(i for i in m.graph.initializer if i.name == f"{node}.weight")
        init.CopyFrom(onnx.numpy_helper.from_array(np.ones(shape, onnx.numpy_helper.to_array(init).dtype), init.name))
        onnx.save(m, p)

    return {"nir": nir_file, "onnx": onnx_file}


def pooled_onnx(p: Path) -> None:
    """An .onnx model with max pooling (a node kind NIR 1.0 cannot hold): conv -> IF -> MaxPool2d."""
    import nir

    import sbc_onnx as sbc
    from sbc_onnx.nodes import MaxPool2d

    rng, ones = np.random.default_rng(0), np.ones((2, 4, 4))
    g = nir.NIRGraph(nodes={
        "input": nir.Input(np.array([1, 4, 4])),
        "conv": nir.Conv2d(input_shape=(4, 4), weight=rng.normal(0, 1, (2, 1, 3, 3)), stride=1, padding=1,
                           dilation=1, groups=1, bias=np.zeros(2)),
        "spk": nir.IF(r=ones, v_threshold=ones, v_reset=0 * ones),
        "pool1": MaxPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]),
                           padding=np.array([0, 0])).set_input_shape((2, 4, 4)),
        "output": nir.Output(np.array([2, 2, 2]))},
        edges=[("input", "conv"), ("conv", "spk"), ("spk", "pool1"), ("pool1", "output")])
    sbc.save_model(g, p, cfg=sbc.SimConfig(dt=DT))


def profile_json(**over) -> Builder:
    def build(p: Path) -> None:
        from sbc_onnx.hardware.profiles import PROFILE_DIR
        d = json.loads((PROFILE_DIR / "loihi2.json").read_text())
        d.update(over)
        p.write_text(json.dumps(d))
    return build


def idx(magic: int, dims: list[int], data: bytes | None = None, gz: bool = False) -> Builder:
    def build(p: Path) -> None:
        head = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
        body = bytes(int(np.prod(dims))) if data is None else data
        raw = head + body
        p.write_bytes(gzip.compress(raw) if gz else raw)
    return build


def mnist_dir(images: Builder | None = None, labels: Builder | None = None, n=5) -> Builder:
    def build(p: Path) -> None:
        p.mkdir()
        (images or idx(2051, [n, 28, 28]))(p / "t10k-images-idx3-ubyte")
        (labels or idx(2049, [n]))(p / "t10k-labels-idx1-ubyte")
    return build


def _event(x, y, pol, t) -> bytes:
    return bytes([x, y, (pol << 7) | (t >> 16), (t >> 8) & 255, t & 255])


def nmnist_dir(samples: dict[str, bytes] | None = None) -> Builder:
    ok = b"".join(_event(i % 34, (2 * i) % 34, i % 2, 100 * i) for i in range(50))
    samples = {"00001": ok, "00002": ok} if samples is None else samples

    def build(p: Path) -> None:
        p.mkdir()
        for name, raw in samples.items():
            (p / f"{name}.bs2").write_bytes(raw)
    return build


LABELS = "#sample #class\n00001\t3\n00002\t5\n"


# ----------------------------------------------------------------------------------------------- the cases

def _compress(*extra: str) -> tuple[str, ...]:
    return ("compress", "{m}", "--calib", "{c}", "-o", "{out_nir}", *extra)


def _opt(group: str, cmd: tuple[str, ...], cases: list[tuple[str, str]]) -> list[Case]:
    """Option cases: each fails in click's check, naming the option."""
    out = []
    for args, needle in cases:
        out.append(Case(f"{group}: {args}", "options", (*cmd, *args.split()), (needle,)))
    return out


S = "--sparsity 0.5 "
CASES: list[Case] = []

CASES += _opt("compress", _compress(), [
    (S + "--damp nan", "--damp"), (S + "--damp -1", "--damp"), (S + "--damp inf", "--damp"),
    (S + "--lamp-p nan", "--lamp-p"), (S + "--lamp-p 0", "--lamp-p"), (S + "--lamp-p -2", "--lamp-p"),
    ("--sparsity nan", "--sparsity"), ("--sparsity 1", "--sparsity"), ("--sparsity -0.1", "--sparsity"),
    ("--sparsity inf", "--sparsity"), ("--sparsity half", "--sparsity"),
    (S + "--calib-limit 0", "--calib-limit"), (S + "--calib-limit -3", "--calib-limit"),
    (S + "--eval-limit 0", "--eval-limit"), (S + "--batch-size 0", "--batch-size"),
    (S + "--dt nan", "--dt"), (S + "--dt 0", "--dt"), (S + "--dt -1e-4", "--dt"),
    ("--bits 1", "--bits"), ("--bits 9", "--bits"), ("--bits four", "--bits"),
    (S + "--method sbcc", "--method"), (S + "--allocation lamb", "--allocation"),
    ("--bits 4 --grid uniform", "--grid"), ("--bits 4 --granularity row", "--granularity"),
    (S + "--readout max", "--readout"), (S + "--integrator rk4", "--integrator"),
    (S + "--reset zero", "--reset"), (S + "--precision float16", "--precision"),
    (S + "--cuba-order random", "--cuba-order"), (S + "--no-such-option", "--no-such-option"),
])
_ONNX_OUT = ("compress", "{m}", "--calib", "{c}", "-o", "{out_onnx}")
CASES += [  # --budget: one line naming what is wrong (the tiny model's weights need more than 100 B)
    Case("compress: --budget memory=lots", "options", (*_ONNX_OUT, "--budget", "memory=lots"), ("memory budget",)),
    Case("compress: --budget mem=3", "options", (*_ONNX_OUT, "--budget", "mem=3"), ("memory=SIZE or synops",)),
    Case("compress: --budget synops=-5", "options", (*_ONNX_OUT, "--budget", "synops=-5"), ("synops budget",)),
    Case("compress: --budget with --bits", "options", (*_ONNX_OUT, "--budget", "memory=1KiB", "--bits", "4"),
         ("without --sparsity, --bits or --pattern",)),
    Case("compress: memory --budget with --target", "options",
         (*_compress(), "--budget", "memory=1KiB", "--target", "loihi2"), ("--target takes a synops budget",)),
    Case("compress: memory --budget to .nir", "paths", (*_compress(), "--budget", "memory=1KiB"), ("write .onnx",)),
    Case("compress: --budget memory=10B too small", "options", (*_ONNX_OUT, "--budget", "memory=10B"),
         ("fits memory=10B",)),
    Case("compress: --budget-search without --budget", "options",
         (*_ONNX_OUT, "--sparsity", "0.5", "--budget-search", "4"), ("give --budget",)),
    Case("compress: --budget-search -1", "options",
         (*_ONNX_OUT, "--budget", "memory=1KiB", "--budget-search", "-1"), ("--budget-search",)),
]


def work_folder(manifest: dict | None, extra: str | None = None) -> Builder:
    """A --resume folder holding `manifest` as its manifest.json (none if None) and a file `extra`."""
    def build(p: Path) -> None:
        p.mkdir()
        if manifest is not None:
            (p / "manifest.json").write_text(json.dumps(manifest))
        if extra:
            (p / extra).write_text("x")
    return build


CASES += [  # --max-memory and --resume (issue #13): refused before any calibration
    Case("compress: --max-memory 1KiB too small", "options", (*_compress(), "--sparsity", "0.5", "--max-memory", "1KiB"),
         ("--max-memory 1.00 KiB is too small",)),
    Case("compress: --max-memory lots", "options", (*_compress(), "--sparsity", "0.5", "--max-memory", "lots"),
         ("--max-memory", "8GiB")),
    Case("compress: --max-memory 0", "options", (*_compress(), "--sparsity", "0.5", "--max-memory", "0"),
         ("--max-memory",)),
    Case("compress: --resume folder of another model", "paths",
         (*_compress(), "--sparsity", "0.5", "--resume", "{w}"), ("was made for another model",),
         {"w": work_folder({"format": "sbc-onnx-work/1", "model": "0" * 64})}),
    Case("compress: --resume non-empty folder without manifest", "paths",
         (*_compress(), "--sparsity", "0.5", "--resume", "{w}"), ("without a manifest.json",),
         {"w": work_folder(None, "notes.txt")}),
    Case("compress: --resume is a file", "paths", (*_compress(), "--sparsity", "0.5", "--resume", "{f}"),
         ("--resume",), {"f": text("x")}),
]
CASES += [  # --workers / --ray-address (issue #15): refused before any work, no Ray runtime started
    Case("compress: --workers 0", "options", (*_compress(), "--sparsity", "0.5", "--workers", "0"), ("--workers",)),
    Case("compress: --workers and --ray-address", "options",
         (*_compress(), "--sparsity", "0.5", "--workers", "2", "--ray-address", "auto"),
         ("--workers", "--ray-address", "not both")),
]
CASES += _opt("eval", ("eval", "{m}", "--data", "{c}"), [
    ("--limit 0", "--limit"), ("--limit -1", "--limit"), ("--start -1", "--start"),
    ("--batch-size 0", "--batch-size"), ("--dt inf", "--dt"), ("--engine tvm", "--engine"),
    ("--readout votes", "--readout"), ("--limit 2.5", "--limit"),
])
CASES += _opt("report", ("report", "{m}", "--data", "{c}"), [
    ("--limit 0", "--limit"), ("--e-ac nan", "--e-ac"), ("--e-mac -1", "--e-mac"),
    ("--batch-size 0", "--batch-size"), ("--e-ac inf", "--e-ac"),
])
CASES += _opt("data mnist", ("data", "mnist", "{dir}", "-o", "{x_npz}"), [
    ("--steps 0", "--steps"), ("--steps 5 --limit 0", "--limit"), ("--steps 5 --start -1", "--start"),
    ("--steps 5 --encoding rate", "--encoding"), ("--steps 5 --split val", "--split"), ("", "--steps"),
])
CASES += _opt("data nmnist", ("data", "nmnist", "{dir}", "{labels}", "-o", "{x_npz}"), [
    ("--time-window-us 0", "--time-window-us"), ("--time-window-us 1.5", "--time-window-us"),
])
CASES += _opt("convert", ("convert", "{m}", "{out_onnx}"), [("--dt 0", "--dt"), ("--reset none", "--reset")])
CASES += _opt("check", ("check", "{m}"), [("", "--target"), ("--target loihi2 --dt nan", "--dt")])
CASES += [
    Case("compress: no --calib", "options", ("compress", "{m}", "-o", "{out_nir}", "--sparsity", "0.5"),
         ("--calib",)),
    Case("compress: no -o", "options", ("compress", "{m}", "--calib", "{c}", "--sparsity", "0.5"), ("--output",)),
    Case("compress: nothing to do", "options", _compress(), ("nothing to do",)),
    Case("compress: --pattern 3:2", "options", _compress("--pattern", "3:2"), ("pattern",)),
    Case("compress: --pattern abc", "options", _compress("--pattern", "abc"), ("pattern",)),
    Case("compress: --pattern 0:4", "options", _compress("--pattern", "0:4"), ("pattern",)),
    Case("compress: --pattern with --sparsity", "options", _compress("--pattern", "2:4", "--sparsity", "0.9"),
         ("pattern",)),
    Case("compress: --target unknown", "options", _compress("--target", "loihi9"), ("loihi9",)),
    Case("unknown command", "options", ("compres", "{m}"), ("compres",)),
    Case("eval: no --data", "options", ("eval", "{m}"), ("--data",)),
    Case("data mnist: --shape 28,28,2", "options",
         ("data", "mnist", "{mn}", "-o", "{x_npz}", "--steps", "2", "--shape", "28,28,2"), ("784",),
         {"mn": mnist_dir()}),
    Case("data mnist: --shape a,b", "options",
         ("data", "mnist", "{mn}", "-o", "{x_npz}", "--steps", "2", "--shape", "a,b"), ("--shape",),
         {"mn": mnist_dir()}),
    Case("eval: --engine onnxruntime on .nir", "options",
         ("eval", "{m}", "--data", "{c}", "--engine", "onnxruntime"), (".onnx",)),
    Case("eval: --engine onnxruntime with another --dt", "options",
         ("eval", "{mo}", "--data", "{c}", "--engine", "onnxruntime", "--dt", "1e-3"), ("re-export",)),
    Case("convert: --int-weights to .nir", "options", ("convert", "{mo}", "{out_nir}", "--int-weights"),
         ("ONNX",)),
    Case("eval: --readout potential on a spiking output", "options",
         ("eval", "{m}", "--data", "{c}", "--readout", "potential"), ("potential",)),
]

# ---- paths: checked before any work, nothing written
CASES += [
    Case("compress: model missing", "paths", ("compress", "{nomodel_nir}", "--calib", "{c}", "-o", "{out_nir}",
                                              "--sparsity", "0.5"), ("not found",)),
    Case("compress: calib missing", "paths", ("compress", "{m}", "--calib", "{nocalib_npz}", "-o", "{out_nir}",
                                              "--sparsity", "0.5"), ("not found", "nocalib")),
    Case("compress: output directory missing", "paths", ("compress", "{m}", "--calib", "{c}", "-o",
                                                         "{missing}/o.nir", "--sparsity", "0.5"),
         ("does not exist",)),
    Case("compress: output is a directory", "paths", ("compress", "{m}", "--calib", "{c}", "-o", "{d_nir}",
                                                      "--sparsity", "0.5"), ("directory",), {"d_nir": directory}),
    Case("compress: output exists, no --force", "paths", _compress("--sparsity", "0.5"), ("--force",),
         {"out_nir": text("old")}),
    Case("compress: output = input model", "paths", ("compress", "{m}", "--calib", "{c}", "-o", "{m}",
                                                     "--sparsity", "0.5", "--force"), ("refusing",)),
    Case("compress: output extension .h5", "paths", ("compress", "{m}", "--calib", "{c}", "-o", "{out_h5}",
                                                     "--sparsity", "0.5"), ("unknown model format",)),
    Case("compress: report directory missing", "paths", _compress("--sparsity", "0.5", "--report",
                                                                  "{missing}/r.json"), ("does not exist",)),
    Case("compress: report = calib", "paths", _compress("--sparsity", "0.5", "--report", "{c}"), ("refusing",)),
    Case("compress: --eval missing", "paths", _compress("--sparsity", "0.5", "--eval", "{missing}/t.npz"),
         ("not found",)),
    Case("compress: model is a directory", "paths", ("compress", "{d_nir}", "--calib", "{c}", "-o", "{out_nir}",
                                                     "--sparsity", "0.5"), ("directory",), {"d_nir": directory}),
    Case("compress: target twin exists", "paths", _compress("--target", "loihi2", "--sparsity", "0.5"),
         ("--force",), {"out_float_nir": text("old")}),
    Case("eval: model missing", "paths", ("eval", "{nomodel_nir}", "--data", "{c}"), ("not found",)),
    Case("eval: data missing", "paths", ("eval", "{m}", "--data", "{nodata_npz}"), ("not found",)),
    Case("eval: data is a directory", "paths", ("eval", "{m}", "--data", "{d_npz}"), ("directory",),
         {"d_npz": directory}),
    Case("eval: model extension .pt", "paths", ("eval", "{m_pt}", "--data", "{c}"), ("unknown model format",),
         {"m_pt": text("x")}),
    Case("report: --json directory missing", "paths", ("report", "{m}", "--data", "{c}", "--json",
                                                       "{missing}/r.json"), ("does not exist",)),
    Case("report: --plot directory missing", "paths", ("report", "{m}", "--data", "{c}", "--plot",
                                                       "{missing}/r.png"), ("does not exist",)),
    Case("report: --json = data", "paths", ("report", "{m}", "--data", "{c}", "--json", "{c}"), ("refusing",)),
    Case("report: --baseline missing", "paths", ("report", "{m}", "--data", "{c}", "--baseline",
                                                 "{nomodel_nir}"), ("not found",)),
    Case("inspect: missing file", "paths", ("inspect", "{nomodel_nir}"), ("not found",)),
    Case("inspect: a directory", "paths", ("inspect", "{d_nir}"), ("directory",), {"d_nir": directory}),
    Case("inspect: extension .txt", "paths", ("inspect", "{m_txt}"), ("unknown model format",),
         {"m_txt": text("x")}),
    Case("inspect: no extension", "paths", ("inspect", "{model}"), ("unknown model format",),
         {"model": text("x")}),
    Case("convert: source missing", "paths", ("convert", "{nomodel_nir}", "{out_onnx}"), ("not found",)),
    Case("convert: target = source", "paths", ("convert", "{m}", "{m}"), ("refusing",)),
    Case("convert: target directory missing", "paths", ("convert", "{m}", "{missing}/m.onnx"),
         ("does not exist",)),
    Case("convert: target extension .pb", "paths", ("convert", "{m}", "{out_pb}"), ("unknown model format",)),
    Case("convert: target is a directory", "paths", ("convert", "{m}", "{d_onnx}"), ("directory",),
         {"d_onnx": directory}),
    Case("convert: max pooling to .nir", "paths", ("convert", "{pool_onnx}", "{out_nir}"),
         ("'pool1' is MaxPool2d", "NIR 1.0", "write the model as .onnx"), {"pool_onnx": pooled_onnx}),
    Case("compress: max pooling to .nir", "paths",
         ("compress", "{pool_onnx}", "--calib", "{c}", "-o", "{out_nir}", "--sparsity", "0.5"),
         ("'pool1' is MaxPool2d", "write the model as .onnx"), {"pool_onnx": pooled_onnx}),
    Case("compress --target: max pooling to .nir", "paths",
         ("compress", "{pool_onnx}", "--calib", "{c}", "-o", "{out_nir}", "--target", "loihi2"),
         ("'pool1' is MaxPool2d", "write the model as .onnx"), {"pool_onnx": pooled_onnx}),
    Case("check: model missing", "paths", ("check", "{nomodel_nir}", "--target", "loihi2"), ("not found",)),
    Case("data mnist: output is a directory", "paths",
         ("data", "mnist", "{mn}", "-o", "{d}", "--steps", "2"), ("is a directory",),
         {"mn": mnist_dir(), "d": directory}),
    Case("data mnist: output = an input file", "paths",
         ("data", "mnist", "{mn}", "-o", "{mn}/t10k-labels-idx1-ubyte", "--steps", "2"), ("refusing",),
         {"mn": mnist_dir()}),
    Case("data nmnist: output = labels file", "paths",
         ("data", "nmnist", "{nm}", "{labels_txt}", "-o", "{labels_txt}"), ("refusing",),
         {"nm": nmnist_dir(), "labels_txt": text(LABELS)}),
    Case("data info: missing file", "paths", ("data", "info", "{nodata_npz}"), ("not found",)),
]

# ---- models: parameters checked on load, NIR and ONNX alike
for ext in ("nir", "onnx"):
    key = f"bad_{ext}"

    def mcase(name: str, change: Callable, needles: tuple[str, ...], cmd: str = "inspect", ext=ext, key=key):
        argv = {"inspect": ("inspect", f"{{{key}}}"),
                "eval": ("eval", f"{{{key}}}", "--data", "{c}"),
                "compress": ("compress", f"{{{key}}}", "--calib", "{c}", "-o", "{out_nir}", "--sparsity", "0.5"),
                "check": ("check", f"{{{key}}}", "--target", "loihi2"),
                "convert": ("convert", f"{{{key}}}", "{out_nir}" if ext == "onnx" else "{out_onnx}"),
                "report": ("report", f"{{{key}}}", "--data", "{c}")}[cmd]
        return Case(f"{cmd} .{ext}: {name}", "models", argv, needles, {key: model(ext, change)})

    CASES += [
        mcase("NaN weight", setp("a2", "weight", (1, 2), np.nan), ("'a2'", "weight", "NaN")),
        mcase("inf weight", setp("a1", "weight", (0, 0), np.inf), ("'a1'", "weight")),
        mcase("NaN bias", setp("a1", "bias", 2, np.nan), ("'a1'", "bias")),
        mcase("zero tau", setp("l2", "tau", 1, 0.0), ("'l2'", "tau", "positive")),
        mcase("negative tau", setp("l1", "tau", 0, -2e-3), ("'l1'", "tau", "positive"), "eval"),
        mcase("NaN tau", setp("l1", "tau", 0, np.nan), ("'l1'", "tau")),
        mcase("NaN threshold", setp("l2", "v_threshold", 0, np.nan), ("'l2'", "v_threshold"), "compress"),
        mcase("inf v_leak", setp("l1", "v_leak", 0, np.inf), ("'l1'", "v_leak"), "check"),
        mcase("NaN r", setp("l2", "r", 2, np.nan), ("'l2'", "r"), "convert"),
        Case(f"report .{ext}: weight shape mismatch", "models", ("report", f"{{{key}}}", "--data", "{c}"),
             ("a2",), {key: resized("a2", (3, 5))[ext]}),
        Case(f"eval .{ext}: first weight wider than the input", "models", ("eval", f"{{{key}}}", "--data", "{c}"),
             ("a1",), {key: resized("a1", (6, 5))[ext]}),
        Case(f"inspect .{ext}: empty file", "models", ("inspect", f"{{{key}}}"), (ext.upper(),),
             {key: text(b"")}),
        Case(f"inspect .{ext}: random bytes", "models", ("inspect", f"{{{key}}}"), (ext.upper(),),
             {key: text(np.random.default_rng(3).bytes(300))}),
        Case(f"inspect .{ext}: a text file", "models", ("inspect", f"{{{key}}}"), (ext.upper(),),
             {key: text("hello\n")}),
    ]


def _h5_without_nodes(p: Path) -> None:
    import h5py
    with h5py.File(p, "w") as f:
        f.create_group("node")


def _onnx_no_graph(p: Path) -> None:
    import onnx
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [])), p)


def _onnx_plain_mlp(p: Path) -> None:
    """A valid ONNX model that is not an SNN of the convention (a plain MatMul)."""
    import onnx
    from onnx import TensorProto, helper
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], np.ones(12, np.float32))
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mlp",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [w])
    onnx.save(helper.make_model(g), p)


CASES += [
    Case("inspect .nir: HDF5 without a graph", "models", ("inspect", "{bad_nir}"), ("NIR",),
         {"bad_nir": _h5_without_nodes}),
    Case("inspect .onnx: empty graph", "models", ("inspect", "{bad_onnx}"), ("ONNX",), {"bad_onnx": _onnx_no_graph}),
    Case("inspect .onnx: not an SNN", "models", ("inspect", "{bad_onnx}"), ("convention",),
         {"bad_onnx": _onnx_plain_mlp}),
    Case("check: unknown target", "models", ("check", "{m}", "--target", "loihi9"), ("loihi9",)),
    Case("check: target .json missing", "models", ("check", "{m}", "--target", "{p_json}"), ("not found",)),
    Case("check: target .json not JSON", "models", ("check", "{m}", "--target", "{p_json}"), ("p.json",),
         {"p_json": text("{not json")}),
    Case("check: target .json a list", "models", ("check", "{m}", "--target", "{p_json}"), ("p.json",),
         {"p_json": text("[1, 2]")}),
    Case("check: target .json weight_bits -1", "models", ("check", "{m}", "--target", "{p_json}"),
         ("weight_bits",), {"p_json": profile_json(weight_bits=-1)}),
    Case("compress: --target .json unknown grid", "models", _compress("--target", "{p_json}"), ("grid",),
         {"p_json": profile_json(grid="spiral")}),
]

# ---- datasets: content checked before use
X, Y = _spikes, _y


def dcase(name: str, needles: tuple[str, ...], cmd: str = "eval", **arrays) -> Case:
    argv = {"eval": ("eval", "{m}", "--data", "{d_npz}"),
            "compress": ("compress", "{m}", "--calib", "{d_npz}", "-o", "{out_nir}", "--sparsity", "0.5"),
            "eval-set": _compress("--sparsity", "0.5", "--method", "magnitude", "--eval", "{d_npz}"),
            "report": ("report", "{m}", "--data", "{d_npz}"),
            "info": ("data", "info", "{d_npz}")}[cmd]
    return Case(f"{cmd}: {name}", "datasets", argv, needles, {"d_npz": npz(**arrays)})


CASES += [
    dcase("NaN in x", ("NaN/inf",), x=_with(_nan), y=Y()),
    dcase("inf in x", ("NaN/inf",), "compress", x=_with(_inf), y=Y()),
    dcase("NaN in x", ("NaN/inf",), "info", x=_with(_nan), y=Y()),
    dcase("T = 0", ("T = 0",), x=_spikes(t=0), y=Y()),
    dcase("T = 0", ("T = 0",), "compress", x=_spikes(t=0), y=Y()),
    dcase("label 99", ("0..2",), x=X(), y=np.r_[Y(15), 99]),
    dcase("label -1", ("0..2",), x=X(), y=np.r_[-1, Y(15)]),
    dcase("input (5,) for (4,)", ("(5,)", "(4,)"), "report", x=X(shape=(5,)), y=Y()),
    dcase("label 99 in the --eval set", ("labels", "99"), "eval-set", x=X(), y=np.r_[Y(15), 99]),
    dcase("labels 2.5", ("integer",), x=X(), y=np.full(16, 2.5)),
    dcase("labels as strings", ("integer",), x=X(), y=np.array(["a"] * 16)),
    dcase("labels (N, 1)", ("(N,)",), x=X(), y=Y()[:, None]),
    dcase("15 labels for 16 samples", ("16", "15"), x=X(), y=Y(15)),
    dcase("input (2, 2) for (4,)", ("(2, 2)", "(4,)"), x=X(shape=(2, 2)), y=Y()),
    dcase("input (4, 1) for (4,)", ("(4, 1)", "(4,)"), x=X(shape=(4, 1)), y=Y()),
    dcase("input (5,) for (4,)", ("(5,)", "(4,)"), "compress", x=X(shape=(5,)), y=Y()),
    dcase("transposed (N, C, T)", ("(30,)", "(4,)"), x=X().transpose(0, 2, 1), y=Y()),
    dcase("transposed (T, N, C)", ("30", "16"), x=X().transpose(1, 0, 2), y=Y()),
    dcase("x 1-D", ("(N, T, *input_shape)",), x=np.zeros(16), y=Y()),
    dcase("x of strings", ("numeric",), x=np.full((16, 30, 4), "a"), y=Y()),
    dcase("no y", ("required array(s) y",), x=X()),
    dcase("no x", ("required array(s) x",), y=Y()),
    dcase("x_scale NaN", ("x_scale",), x=X(), y=Y(), x_scale=np.array(np.nan)),
    dcase("x_scale a vector", ("x_scale",), x=X(), y=Y(), x_scale=np.ones(3)),
    dcase("repeat_steps 0", ("repeat_steps",), x=X(t=1), y=Y(), repeat_steps=np.array(0)),
    dcase("repeat_steps with T = 30", ("repeat_steps",), x=X(), y=Y(), repeat_steps=np.array(3)),
    dcase("lengths > T", ("lengths",), x=X(), y=Y(), lengths=np.full(16, 31)),
    dcase("lengths negative", ("lengths",), x=X(), y=Y(), lengths=np.full(16, -1)),
    dcase("meta not JSON", ("meta",), x=X(), y=Y(), meta=np.array("{oops")),
    dcase("ids of wrong length", ("ids",), x=X(), y=Y(), ids=np.arange(3)),
    dcase("object array (pickle)", ("d.npz",), x=np.array([np.zeros(3), "a"], dtype=object), y=Y(2)),
    dcase("no samples", ("no samples",), x=X(n=0), y=Y(0)),
    Case("eval: --start past the end", "datasets", ("eval", "{m}", "--data", "{c}", "--start", "16"),
         ("no samples",)),
    Case("eval: data is a text file", "datasets", ("eval", "{m}", "--data", "{d_npz}"), ("d.npz",),
         {"d_npz": text("x,y\n1,2\n")}),
    Case("eval: data is an empty file", "datasets", ("eval", "{m}", "--data", "{d_npz}"), ("d.npz",),
         {"d_npz": text(b"")}),
    Case("eval: x member damaged", "datasets", ("eval", "{m}", "--data", "{d_npz}"), ("d.npz", "damaged"),
         {"d_npz": damaged_x}),
    Case("compress: calib x member damaged", "datasets", ("compress", "{m}", "--calib", "{d_npz}", "-o",
                                                          "{out_nir}", "--sparsity", "0.5"), ("d.npz", "damaged"),
         {"d_npz": damaged_x}),
    Case("data info: truncated zip", "datasets", ("data", "info", "{d_npz}"), ("d.npz",),
         {"d_npz": lambda p: (npz(x=X(), y=Y())(p), p.write_bytes(p.read_bytes()[:200]))}),
    Case("compress: calib is a model file", "datasets", ("compress", "{m}", "--calib", "{m}", "-o", "{out_nir}",
                                                         "--sparsity", "0.5"), ("m.nir",)),
]

# ---- data: raw recordings and idx files
L = ("data", "nmnist", "{nm}", "{labels_txt}", "-o", "{x_npz}")


def ncase(name: str, needles: tuple[str, ...], labels: str | bytes = LABELS, samples: dict | None = None) -> Case:
    return Case(f"data nmnist: {name}", "data", L, needles, {"nm": nmnist_dir(samples), "labels_txt": text(labels)})


OK_EVENTS = b"".join(_event(i % 34, (2 * i) % 34, i % 2, 100 * i) for i in range(50))
M = ("data", "mnist", "{mn}", "-o", "{x_npz}", "--steps", "2")
CASES += [
    Case("data nmnist: labels file missing", "data", L, ("labels file not found",), {"nm": nmnist_dir()}),
    ncase("labels: three columns", ("line 2",), "#s #c\n00001\t3\t7\n"),
    ncase("labels: class not an integer", ("'x'",), "#s #c\n00001\tx\n"),
    ncase("labels: negative class", ("negative",), "#s #c\n00001\t-3\n"),
    ncase("labels: no rows", ("no samples",), "#sample #class\n"),
    ncase("labels: duplicate id", ("more than once",), "00001\t1\n00001\t1\n"),
    ncase("labels: not UTF-8", ("text",), b"00001\t1\n\xff\xfe"),
    ncase("sample file missing", ("00003",), "00001\t1\n00003\t2\n"),
    ncase("recording truncated", ("multiple of 5",), samples={"00001": OK_EVENTS[:-2], "00002": OK_EVENTS}),
    ncase("event outside the sensor", ("sensor",), samples={"00001": _event(40, 3, 0, 5) + OK_EVENTS,
                                                             "00002": OK_EVENTS}),
    ncase("recording without events", ("no events",), samples={"00001": b"", "00002": OK_EVENTS}),
    Case("data nmnist: directory missing", "data", ("data", "nmnist", "{nm}", "{labels_txt}", "-o", "{x_npz}"),
         ("not found",), {"labels_txt": text(LABELS)}),
    Case("data mnist: directory missing", "data", M, ("not found",)),
    Case("data mnist: directory empty", "data", M, ("not found",), {"mn": directory}),
    Case("data mnist: images magic wrong", "data", M, ("magic",), {"mn": mnist_dir(images=idx(2049, [5, 28, 28]))}),
    Case("data mnist: images truncated", "data", M, ("header",),
         {"mn": mnist_dir(images=idx(2051, [5, 28, 28], bytes(100)))}),
    Case("data mnist: images 20x20", "data", M, ("28x28",), {"mn": mnist_dir(images=idx(2051, [5, 20, 20]))}),
    Case("data mnist: 4 labels for 5 images", "data", M, ("labels",), {"mn": mnist_dir(labels=idx(2049, [4]))}),
    Case("data mnist: bad gzip", "data", M, ("cannot read",),
         {"mn": lambda p: (p.mkdir(), (p / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8bnot gzip"),
                           idx(2049, [5])(p / "t10k-labels-idx1-ubyte"))}),
    Case("data mnist: --start past the end", "data", (*M, "--start", "5"), ("start",), {"mn": mnist_dir()}),
    Case("data mnist: 3-byte file", "data", M, ("idx",),
         {"mn": mnist_dir(images=text(b"abc"))}),
]


# ----------------------------------------------------------------------------------------------- judging

def snapshot(*dirs: Path) -> dict[str, bytes]:
    """Every file under `dirs` with its content (the inputs are small)."""
    return {str(p): p.read_bytes() for d in dirs for p in sorted(Path(d).rglob("*")) if p.is_file()}


def problems(case: Case, code: int | None, stderr: str, before: dict[str, bytes], after: dict[str, bytes]) -> list[str]:
    """What is wrong with one run of `case` (empty: as expected). code None: it did not end in time."""
    if code is None:
        return ["hang"]
    found = []
    if "Traceback" in stderr:
        found.append("traceback")
    if code == 0:
        found.append("silent (exit 0)")
    elif code != case.code:
        found.append(f"exit {code}, expected {case.code}")
    lines = stderr.strip().splitlines()
    if len(lines) != 1 or not lines[0].startswith("error: "):
        found.append(f"{len(lines)} stderr lines, expected one 'error:' line")
    elif missing := [n for n in case.needles if n not in lines[0]]:
        found.append(f"message lacks {missing}")
    if new := sorted(set(after) - set(before)):
        found.append(f"wrote {new}")
    if changed := sorted(k for k in before if after.get(k) != before[k]):
        found.append(f"changed or removed {changed}")
    return found
