"""`sbc-onnx convert IN OUT`: NIR <-> ONNX (the project's SNN convention), by file extension."""

from __future__ import annotations

import os

import click

from ..io.models import check_format, load_model, model_format, save_model
from ..io.paths import check_output
from . import cli
from .model_cmd import setup_logging, sim_config, sim_options


@cli.command()
@click.argument("source", type=click.Path(dir_okay=False))
@click.argument("target", type=click.Path(dir_okay=False))
@click.option("--int-weights", is_flag=True,
              help="ONNX output: store weights that lie on an integer grid (<= 8 bits, per output channel) as "
                   "INT4/INT8 initializers + scales (DequantizeLinear); other weights stay float.")
@sim_options
def convert(source, target, int_weights, dt, integrator, reset, cuba_order, precision, strict) -> None:
    """Convert SOURCE to TARGET (.nir or .onnx). The discretization (dt, integrator, reset, cuba order) is
    recorded in the output's metadata; an ONNX file also bakes it into its time step."""
    setup_logging()
    src_fmt, dst_fmt = model_format(source), model_format(target)
    check_output(target, what="target", inputs=[source])
    graph = load_model(source)
    check_format(graph, target)
    cfg = sim_config(graph, source, strict=strict, dt=dt, integrator=integrator, reset=reset,
                     cuba_order=cuba_order, precision=precision)
    save_model(graph, target, cfg=cfg, metadata={"converted_from": os.path.basename(source)},
               int_weights=int_weights)
    click.echo(f"{source} ({src_fmt}, {os.path.getsize(source)} bytes) -> {target} ({dst_fmt}, "
               f"{os.path.getsize(target)} bytes); dt={cfg.dt:g}, integrator={cfg.integrator}, reset={cfg.reset}, "
               f"cuba_order={cfg.cuba_order}")
