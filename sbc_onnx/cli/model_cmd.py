"""`sbc-onnx inspect` and `sbc-onnx eval`."""

from __future__ import annotations

import logging

import click
import numpy as np

from ..data import load_dataset
from ..errors import SbcError
from ..evaluate import check_readout, evaluate, output_source
from ..graph import flatten, node_shape, param_count
from ..io.models import load_model, model_format
from ..primitives import NEURON
from ..sim import Walker
from ..sim.config import CUBA_ORDERS, INTEGRATORS, RESETS, SimConfig, config_for
from . import cli
from .params import COUNT, POSITIVE


class _NoteHandler(logging.Handler):
    """Writes to the stderr of the moment (a StreamHandler keeps the stream it was created with)."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(self.format(record), err=True)


def setup_logging(verbose: bool = False) -> None:
    """Library notes (e.g. a file loaded without type checking) go to stderr as 'note: ...'."""
    log = logging.getLogger("sbc_onnx")
    if not any(isinstance(h, _NoteHandler) for h in log.handlers):
        h = _NoteHandler()
        h.setFormatter(logging.Formatter("note: %(message)s"))
        log.addHandler(h)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


def sim_options(f):
    """Discretization options shared by every command that simulates (read them with `sim_config`)."""
    f = click.option("--strict", is_flag=True,
                     help="Refuse a model that does not record a setting its simulation depends on (dt, "
                          "integrator, reset, cuba order) instead of assuming the default, unless the option "
                          "gives it.")(f)
    f = click.option("--precision", type=click.Choice(["float32", "float64"]), default="float32",
                     show_default=True, help="Simulation float type.")(f)
    f = click.option("--cuba-order", type=click.Choice(CUBA_ORDERS), default=None,
                     help="CubaLIF update order [default: graph metadata, else current_first].")(f)
    f = click.option("--reset", type=click.Choice(RESETS), default=None,
                     help="Reset after a spike [default: graph metadata, else to_v_reset].")(f)
    f = click.option("--integrator", type=click.Choice(INTEGRATORS), default=None,
                     help="Leak integration [default: graph metadata, else euler].")(f)
    f = click.option("--dt", type=POSITIVE, default=None,
                     help="Time step in the graph's time unit [default: graph metadata, else 1e-4].")(f)
    return f


def sim_config(graph, model: str, *, strict: bool, dt, integrator, reset, cuba_order, precision) -> SimConfig:
    """The settings of `sim_options` for MODEL: its metadata, then the options; a note names each default
    assumed for a setting neither gives (--strict: an error instead, `config_for`)."""
    return config_for(graph, strict=strict, source=str(model), dt=dt, integrator=integrator, reset=reset,
                      cuba_order=cuba_order, dtype=precision)


def load_data_for(walker: Walker, path: str, limit: int | None, start: int = 0, *, labels: bool = False):
    """Load a dataset and check it fits the graph before any simulation: the input shape exactly (a layout
    that would only fit after a reshape or transpose is refused, not guessed), at least one sample, and
    with `labels` (evaluation) every label one of the graph's outputs."""
    ds = load_dataset(path)
    if start or limit is not None:
        ds = ds.take(limit, start=start)
    want = walker.input_shape
    if want is not None and tuple(ds.input_shape) != tuple(want):
        same = int(np.prod(ds.input_shape)) == int(np.prod(want))
        raise SbcError(f"{path}: data input shape {tuple(ds.input_shape)} does not match the graph's input shape "
                       f"{tuple(want)}" + ("; the layout differs (e.g. channels last): rebuild the dataset in the "
                                           "graph's layout" if same else ""))
    if ds.n == 0:
        raise SbcError(f"{path}: no samples" + (f" from sample {start}" if start else ""))
    if labels:
        n_classes = output_size(walker)
        if n_classes is not None:
            ds.check_labels(n_classes)
    return ds


def output_size(walker: Walker) -> int | None:
    """Number of values of the graph's (first) output per step: the classes of a classifier."""
    fg = walker.fg
    shape = node_shape(fg.nodes[fg.outputs[0]], "input") if fg.outputs else None
    return None if shape is None else int(np.prod(shape))


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
def inspect(model: str) -> None:
    """Table of nodes: type, shapes, parameter count, neuron parameters."""
    setup_logging()
    graph = load_model(model)
    fg = flatten(graph)
    rows = []
    for name in fg.order:
        node = fg.nodes[name]
        kind = type(node).__name__
        shape_in, shape_out = node_shape(node, "input"), node_shape(node, "output")
        info = ""
        if fg.role(name) == NEURON:
            parts = []
            for f in fg.prim(name).params:
                v = getattr(node, f, None)
                if v is not None:
                    a = np.asarray(v, dtype=np.float64)
                    parts.append(f"{f}={a.reshape(-1)[0]:.4g}" + ("" if np.all(a == a.reshape(-1)[0]) else "~"))
            info = " ".join(parts)
        elif hasattr(node, "weight"):
            w = np.asarray(node.weight)
            nz = np.count_nonzero(w)
            info = f"sparsity={1 - nz / w.size:.3f} dtype={w.dtype}"
        rows.append((name, kind, _fmt(shape_in), _fmt(shape_out), str(param_count(node)), info))
    back = ", ".join(f"{s}->{d}" for s, d in sorted(fg.back_edges)) or "none"
    widths = [max(len(r[i]) for r in rows + [("node", "type", "input", "output", "params", "")])
              for i in range(5)]
    head = ("node", "type", "input", "output", "params")
    click.echo("  ".join(h.ljust(w) for h, w in zip(head, widths)) + "  details")
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5])
    total = sum(param_count(n) for n in fg.nodes.values())
    click.echo(f"{len(fg.nodes)} nodes, {len(fg.edges)} edges, recurrent (back) edges: {back}; "
               f"{total} weights+biases; format {model_format(model)}")
    if graph.metadata:
        keys = ", ".join(sorted(graph.metadata))
        click.echo(f"metadata: {keys}")


def _fmt(shape) -> str:
    return "?" if shape is None else "x".join(str(s) for s in shape) or "scalar"


@cli.command("eval")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--data", "data_path", required=True, type=click.Path(dir_okay=False),
              help="Dataset .npz (see `sbc-onnx data`).")
@click.option("--limit", type=COUNT, default=None, help="Evaluate only the first N (>= 1) samples.")
@click.option("--start", type=click.IntRange(min=0), default=0, help="Skip the first K samples.")
@click.option("--readout", type=click.Choice(["count", "count+potential", "potential"]), default="count",
              show_default=True, help="count: argmax of output spike counts (ties -> lowest index); "
              "count+potential: ties broken by the output membrane potential; potential: argmax of the "
              "final state of a non-spiking output (LI, I, CubaLI).")
@click.option("--batch-size", type=COUNT, default=64, show_default=True)
@click.option("--engine", type=click.Choice(["numpy", "onnxruntime"]), default="numpy", show_default=True,
              help="Simulator: the NumPy walker, or onnxruntime for .onnx models.")
@sim_options
def eval_cmd(model, data_path, limit, start, readout, batch_size, engine, dt, integrator, reset, cuba_order,
             precision, strict) -> None:
    """Simulate MODEL on a dataset; print firing rates and the accuracy."""
    setup_logging()
    graph = load_model(model)
    cfg = sim_config(graph, model, strict=strict, dt=dt, integrator=integrator, reset=reset, cuba_order=cuba_order,
                     precision=precision)
    walker = Walker(graph, cfg)
    if engine == "onnxruntime":
        _check_onnxruntime(model, graph, cfg)
    src = output_source(walker.fg)
    check_readout(readout, src, src in walker.spiking)  # before any simulation
    ds = load_data_for(walker, data_path, limit, start, labels=True)
    click.echo(f"{model}: {ds.n} samples x {ds.steps} steps, dt={cfg.dt:g}, integrator={cfg.integrator}, "
               f"reset={cfg.reset}, engine={engine}", err=True)
    if engine == "onnxruntime":
        from ..io.onnx_io import evaluate_onnxruntime  # on first use: importing onnx is slow

        res = evaluate_onnxruntime(model, ds, readout=readout, batch_size=batch_size, progress=True)
    else:
        res = evaluate(walker, ds, readout=readout, batch_size=batch_size, progress=True)
    print_eval(res)


def _check_onnxruntime(model: str, graph, cfg: SimConfig) -> None:
    """onnxruntime runs the .onnx file as stored: an .onnx model and its own discretization."""
    if model_format(model) != "onnx":
        raise SbcError("--engine onnxruntime needs an .onnx model (convert with `sbc-onnx convert`)")
    stored = SimConfig.from_graph(graph)
    if cfg.to_metadata() != stored.to_metadata():
        raise SbcError("the onnxruntime engine runs the discretization stored in the file "
                       f"(dt={stored.dt:g}, {stored.integrator}, reset {stored.reset}); to change it, "
                       "re-export with `sbc-onnx convert IN OUT --dt ... --reset ...`")


def print_eval(res) -> None:
    if res.firing_rates:
        click.echo("firing rate (spikes per neuron per step):")
        for name, rate in res.firing_rates.items():
            click.echo(f"  {name:<16} {rate:.4f}")
    click.echo(f"{res.n} samples in {res.seconds:.1f} s ({res.n / max(res.seconds, 1e-9):.1f} samples/s); "
               f"top-count ties {res.ties}, silent outputs {res.silent}")
    click.echo(res.line())
