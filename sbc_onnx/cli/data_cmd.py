"""`sbc-onnx data ...`: build dataset .npz files (N-MNIST, any tonic dataset on disk, MNIST) and inspect them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np

from ..data import Dataset, load_dataset, load_mnist, load_nmnist, load_tonic, save_dataset
from ..errors import SbcError
from ..io.paths import check_output
from . import cli
from .params import COUNT


def _size(nbytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} GB"  # pragma: no cover


def _summary(ds: Dataset, path: Path) -> str:
    steps = f"{ds.steps} steps"
    if ds.lengths is not None and ds.n and ds.lengths.min() != ds.lengths.max():
        steps += f" (lengths {ds.lengths.min()}..{ds.lengths.max()})"
    if ds.repeat_steps is not None:
        steps += " (one static frame repeated)"
    return (
        f"{path}: {ds.n} samples, {steps}, input shape {ds.input_shape}, "
        f"{ds.x.dtype}, {_size(path.stat().st_size)}"
    )


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise SbcError(f"--shape must be comma-separated integers like 1,28,28 or 784, got {text!r}") from None
    if not shape:
        raise SbcError(f"--shape must not be empty, got {text!r}")
    return shape


def _files_in(directory: Path) -> list[Path]:
    """The files a loader may read from `directory` (an output must not replace one of them)."""
    return [p for p in directory.iterdir() if p.is_file()] if directory.is_dir() else []


@cli.group("data")
def data() -> None:
    """Build and inspect dataset files (.npz: x (N, T, *input_shape), y (N,))."""


@data.command("nmnist")
@click.argument("directory", type=click.Path(path_type=Path))
@click.argument("labels", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="output .npz")
@click.option(
    "--time-window-us", type=COUNT, default=1000, show_default=True, help="frame length in microseconds (one step)"
)
def nmnist_cmd(directory: Path, labels: Path, output: Path, time_window_us: int) -> None:
    """N-MNIST .bs2 recordings listed in LABELS (`#sample #class` file) -> event-count frames (T, 2, 34, 34)."""
    check_output(output, what="dataset", inputs=[labels, *_files_in(directory)], make_dirs=True)
    t0 = time.perf_counter()
    ds = load_nmnist(directory, labels, time_window_us, progress=True)
    save_dataset(ds, output)
    click.echo(f"{_summary(ds, output)}; {time.perf_counter() - t0:.1f} s")


@data.command("tonic")
@click.argument("name")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="output .npz")
@click.option("--split", type=click.Choice(["train", "test", "valid"]), default=None,
              help="subset to read  [default: test, for datasets that have splits]")
@click.option("--time-window", type=COUNT, default=None,
              help="frame length in microseconds (tonic ToFrame time_window)  [default: 1000 if no other binning]")
@click.option("--event-count", type=COUNT, default=None, help="events per frame (tonic ToFrame event_count)")
@click.option("--n-time-bins", type=COUNT, default=None, help="frames per sample (tonic ToFrame n_time_bins)")
@click.option("--limit", type=COUNT, default=None, help="number of samples, the first in file-path order (default: all)")
def tonic_cmd(
    name: str,
    directory: Path,
    output: Path,
    split: str | None,
    time_window: int | None,
    event_count: int | None,
    n_time_bins: int | None,
    limit: int | None,
) -> None:
    """A tonic dataset NAME (NMNIST, DVSGesture, SHD, ...) whose files are in DIRECTORY -> event-count frames.

    DIRECTORY is tonic's save_to folder, holding NAME/ in tonic's layout (e.g. NMNIST/Test/<digit>/<id>.bin);
    nothing is downloaded. Frames are binned by tonic's ToFrame with the dataset's sensor size.
    """
    check_output(output, what="dataset", make_dirs=True)
    t0 = time.perf_counter()
    ds = load_tonic(
        name,
        directory,
        split=split,
        time_window=time_window,
        event_count=event_count,
        n_time_bins=n_time_bins,
        limit=limit,
        progress=True,
    )
    save_dataset(ds, output)
    click.echo(f"{_summary(ds, output)}; {time.perf_counter() - t0:.1f} s")


@data.command("mnist")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="output .npz")
@click.option("--steps", type=COUNT, required=True, help="time steps T per image")
@click.option(
    "--encoding",
    type=click.Choice(["bernoulli", "analog"]),
    default="bernoulli",
    show_default=True,
    help="bernoulli: spike = rng.random() < pixel/255 per step; analog: pixel/255 every step",
)
@click.option("--limit", type=COUNT, default=None, help="number of images (>= 1; default: all)")
@click.option("--start", type=click.IntRange(min=0), default=0, show_default=True, help="index of the first image")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="seed of the Bernoulli generator")
@click.option("--shape", default="1,28,28", show_default=True, help="per-step input shape, e.g. 1,28,28 or 784")
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True)
def mnist_cmd(
    directory: Path,
    output: Path,
    steps: int,
    encoding: str,
    limit: int | None,
    start: int,
    seed: int,
    shape: str,
    split: str,
) -> None:
    """MNIST idx files in DIRECTORY (t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]) -> spikes."""
    check_output(output, what="dataset", inputs=_files_in(directory), make_dirs=True)
    t0 = time.perf_counter()
    ds = load_mnist(
        directory,
        steps=steps,
        encoding=encoding,
        limit=limit,
        start=start,
        seed=seed,
        shape=_parse_shape(shape),
        split=split,
        progress=True,
    )
    save_dataset(ds, output)
    click.echo(f"{_summary(ds, output)}; {time.perf_counter() - t0:.1f} s")


@data.command("info")
@click.argument("file", type=click.Path(path_type=Path))
def info_cmd(file: Path) -> None:
    """Describe a dataset .npz: size, steps, input shape, dtype, labels, metadata."""
    ds = load_dataset(file)
    click.echo(_summary(ds, file))
    x = ds.x
    click.echo(f"  x: stored shape {x.shape}, dtype {x.dtype}, values {_range(x)}")
    if ds.x_scale is not None:
        click.echo(f"  x_scale: {ds.x_scale:.9g}")
    if ds.repeat_steps is not None:
        click.echo(f"  repeat_steps: {ds.repeat_steps} (one stored frame per sample)")
    if ds.lengths is not None and ds.n:
        click.echo(f"  lengths: {ds.lengths.min()}..{ds.lengths.max()} (mean {ds.lengths.mean():.1f})")
    if ds.n:
        if ds.y.min() >= 0:
            hist = ds.label_histogram()
            click.echo(f"  labels: {len(hist)} classes, histogram {hist.tolist()}")
        else:
            click.echo(f"  labels: {ds.y.min()}..{ds.y.max()}")
    if ds.ids is not None and ds.n:
        click.echo(f"  ids: {ds.ids[0]} .. {ds.ids[-1]}")
    if ds.meta:
        click.echo(f"  meta: {json.dumps(ds.meta, sort_keys=True)}")


def _range(x) -> str:
    """Value range of the stored ``x``, read a chunk at a time (``x`` may be on disk, `io.npz_rows`)."""
    lo = hi = None
    ones = total = 0
    for c in x.chunks() if hasattr(x, "chunks") else (x,):
        if c.size:
            lo = c.min() if lo is None else min(lo, c.min())
            hi = c.max() if hi is None else max(hi, c.max())
            ones, total = ones + int(np.count_nonzero(c)), total + c.size
    if not total:
        return "(empty)"
    if x.dtype == np.bool_:
        return f"0/1, {ones / total:.4f} ones"
    return f"{lo}..{hi}"
