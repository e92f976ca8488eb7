"""`sbc-onnx compress`: one-shot pruning and/or quantization of a NIR or ONNX model."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import click

from ..compress import METHODS
from ..errors import SbcError
from ..io.models import load_model, model_format, save_model
from ..pipeline import ALLOCATIONS, GRIDS, compress, compression_metadata
from ..sim import Walker
from . import cli
from .model_cmd import load_data_for, make_config, print_eval, setup_logging, sim_options


def _same_file(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve() or (Path(b).exists() and os.path.samefile(a, b))
    except OSError:
        return False


def write_json_atomic(obj, path: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    os.replace(tmp, path)


@cli.command("compress")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--calib", "calib_path", required=True, type=click.Path(dir_okay=False),
              help="Calibration dataset .npz (a few samples per class suffice; labels unused).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Output model (.nir or .onnx; format by extension).")
@click.option("--sparsity", type=float, default=None, help="Overall fraction of weights to prune, e.g. 0.9.")
@click.option("--bits", type=click.IntRange(2, 8), default=None, help="Quantize weights to this many bits.")
@click.option("--method", type=click.Choice(METHODS), default="sbc", show_default=True,
              help="sbc: spike-train (SMP) Hessian, ExactOBS pruning + GPTQ quantization; sbc-fast: same "
                   "objective, SparseGPT-style sweep; obc: current Hessian (M = I); magnitude, wanda, rtn.")
@click.option("--pattern", default=None, help="N:M semi-structured sparsity along each row's inputs, e.g. 2:4.")
@click.option("--allocation", type=click.Choice(ALLOCATIONS), default="lamp", show_default=True,
              help="How the overall sparsity is split across layers: lamp (the paper's), uniform, global "
                   "(magnitude), obs (global k smallest ExactOBS trace scores, each divided by its layer's "
                   "dense objective; costs one extra trace per layer; measured with sbc, mean of three draws: "
                   "+0.3 to +0.6 points at 90 %, +0.2 to +5.1 at 95 %).")
@click.option("--lamp-p", type=float, default=2.0, show_default=True, help="LAMP score exponent.")
@click.option("--grid", type=click.Choice(GRIDS), default="symmetric", show_default=True,
              help="Quantization grid (symmetric: 2^b levels incl. the extra negative one, as the paper).")
@click.option("--granularity", type=click.Choice(["channel", "tensor"]), default="channel", show_default=True)
@click.option("--damp", type=float, default=0.01, show_default=True,
              help="Relative Hessian damping (escalates x10 up to 1.0 on failure, then falls back).")
@click.option("--sequential/--dense-calibration", default=False, show_default=True,
              help="Collect each layer's Hessian with the already-compressed upstream layers.")
@click.option("--exact-resolve", is_flag=True, help="Re-solve every row exactly on its kept weights "
              "after mask selection (sbc-fast, magnitude, wanda).")
@click.option("--calib-limit", type=int, default=None, help="Use only the first N calibration samples.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
              help="Write the full report as JSON.")
@click.option("--eval", "eval_path", type=click.Path(dir_okay=False), default=None,
              help="Evaluate dense and compressed accuracy on this dataset.")
@click.option("--eval-limit", type=int, default=None)
@click.option("--readout", type=click.Choice(["count", "count+potential", "potential"]), default="count",
              show_default=True)
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@click.option("--target", default=None, help="Hardware profile (see `sbc-onnx profiles`): bits, grid and scale "
              "granularity from the profile, weight scales folded into the neurons; writes OUTPUT (integer .nir) "
              "and OUTPUT.float.nir (dequantized twin). See docs/deploying.md.")
@sim_options
def compress_cmd(model, calib_path, output, sparsity, bits, method, pattern, allocation, lamp_p, grid, granularity,
                 damp, sequential, exact_resolve, calib_limit, batch_size, report_path, eval_path, eval_limit,
                 readout, force, target, dt, integrator, reset, cuba_order, precision) -> None:
    """Compress MODEL one-shot and write the result to OUTPUT (only weights change)."""
    setup_logging()
    model_format(output)  # fail early on an unknown extension
    if _same_file(model, output):
        raise SbcError("refusing to overwrite the input model; choose another output path")
    if Path(output).exists() and not force:
        raise SbcError(f"{output} exists; use --force to overwrite")
    graph = load_model(model)
    cfg = make_config(graph, dt, integrator, reset, cuba_order, precision)
    walker = Walker(graph, cfg)
    calib = load_data_for(walker, calib_path, calib_limit)
    if target:  # hardware deployment path: sbc_onnx/hardware, cli/hardware_cmd.py
        from .hardware_cmd import compress_target

        return compress_target(model=model, graph=graph, calib=calib, cfg=cfg, target=target, output=output,
                               sparsity=sparsity, bits=bits, method=method, pattern=pattern, allocation=allocation,
                               lamp_p=lamp_p, damp=damp, batch_size=batch_size,
                               eval_path=eval_path, eval_limit=eval_limit, readout=readout, walker=walker)
    what = ", ".join(x for x in (f"sparsity {sparsity}" if sparsity is not None else "",
                                 f"pattern {pattern}" if pattern else "", f"{bits} bits" if bits else "") if x)
    click.echo(f"[1/3] calibrating {model} on {calib.n} samples x {calib.steps} steps "
               f"(dt={cfg.dt:g}, {cfg.integrator}, reset {cfg.reset}); method {method}, {what}", err=True)
    new, report = compress(graph, calib, sparsity=sparsity, bits=bits, method=method, pattern=pattern,
                           allocation=allocation, lamp_p=lamp_p, grid=grid, granularity=granularity, cfg=cfg,
                           sequential=sequential, rel_damp=damp, exact_resolve=exact_resolve,
                           batch_size=batch_size, progress=True)
    click.echo(report.table())
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    s = report.seconds
    click.echo(f"[2/3] calibration {s['calibration']:.1f} s, compression {s['compression']:.1f} s, "
               f"spike-damage measurement {s['damage']:.1f} s", err=True)
    source = model if model_format(model) == "onnx" else None
    out = save_model(new, output, cfg=cfg, source=source, metadata=compression_metadata(report))
    click.echo(f"wrote {out} ({out.stat().st_size / 1024:.1f} KiB)")
    if eval_path:
        from ..evaluate import evaluate

        click.echo("[3/3] evaluating dense and compressed models", err=True)
        test = load_data_for(walker, eval_path, eval_limit)
        dense = evaluate(walker, test, readout=readout, batch_size=batch_size * 2, progress=True)
        comp = evaluate(Walker(new, cfg), test, readout=readout, batch_size=batch_size * 2, progress=True)
        report.accuracy_dense, report.accuracy_compressed = dense.accuracy, comp.accuracy
        click.echo(f"dense      {dense.line()}")
        click.echo(f"compressed {comp.line()}")
        click.echo("compressed model:")
        print_eval(comp)
    if report_path:
        write_json_atomic(report.to_dict(), report_path)
        click.echo(f"wrote report {report_path}", err=True)
