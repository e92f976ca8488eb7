"""`sbc-onnx check`, `sbc-onnx report`, `sbc-onnx profiles` (`compress --target` is the compress command)."""

from __future__ import annotations

from pathlib import Path

import click

from ..hardware import (
    E_AC_PJ,
    E_MAC_PJ,
    check_graph,
    compare_table,
    energy_report,
    load_profile,
    plot_reports,
    profile_names,
)
from ..hardware.profiles import format_source
from ..io.models import load_model
from ..io.paths import check_output
from ..sim import Walker
from . import cli
from .model_cmd import load_data_for, setup_logging, sim_config, sim_options
from .output import write_json
from .params import COUNT, NON_NEGATIVE


class CheckFailed(click.ClickException):
    """The model violates the target's constraints: exit code 1 (bad input stays 2)."""

    exit_code = 1


@cli.command("profiles")
@click.argument("name", required=False)
def profiles_cmd(name) -> None:
    """List the hardware profiles, or show one with its sources."""
    if not name:
        for n in profile_names():
            if n.startswith("intN"):
                click.echo(f"{n}: generic N-bit integer target (per-output-neuron scales, no chip limits)")
            else:
                click.echo(load_profile(n).summary())
        return
    p = load_profile(name)
    click.echo(p.description)
    for k, v in p.__dict__.items():
        if k not in ("description", "sources", "citations") and v is not None:
            click.echo(f"  {k:<28} {v}")
    click.echo("sources:")
    for k, src, why in p.citations:
        click.echo(f"  {k:<28} {format_source(src, why)}")
    for s in p.sources:
        click.echo(f"  - {s}")


@cli.command("check")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--target", required=True, help="Hardware profile (sbc-onnx profiles) or a profile .json.")
@sim_options
def check_cmd(model, target, dt, integrator, reset, cuba_order, precision, strict) -> None:
    """List every constraint of the TARGET chip that MODEL violates; exit 1 if any error."""
    setup_logging()
    profile = load_profile(target)
    graph = load_model(model)
    cfg = sim_config(graph, model, strict=strict, dt=dt, integrator=integrator, reset=reset, cuba_order=cuba_order,
                     precision=precision)
    found = check_graph(graph, profile, cfg)
    errors = [v for v in found if v.severity == "error"]
    for v in found:
        click.echo(v.line())
    summary = f"{model}: {len(errors)} violation(s), {len(found) - len(errors)} warning(s) for {profile.name}"
    if errors:
        raise CheckFailed(summary)
    click.echo(summary + " -- OK")


@cli.command("report")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--data", "data_path", required=True, type=click.Path(dir_okay=False), help="Dataset .npz.")
@click.option("--baseline", type=click.Path(dir_okay=False), default=None,
              help="Dense model to put side by side (e.g. the model before compression).")
@click.option("--limit", type=COUNT, default=None, help="Use only the first N (>= 1) samples.")
@click.option("--e-ac", type=NON_NEGATIVE, default=E_AC_PJ, show_default=True, help="Energy per accumulate [pJ].")
@click.option("--e-mac", type=NON_NEGATIVE, default=E_MAC_PJ, show_default=True,
              help="Energy per multiply-accumulate [pJ] (first layer, non-spiking input).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None, help="Write a PNG.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the figures as JSON.")
@click.option("--batch-size", type=COUNT, default=50, show_default=True)
@sim_options
def report_cmd(model, data_path, baseline, limit, e_ac, e_mac, plot_path, json_path, batch_size, dt, integrator,
               reset, cuba_order, precision, strict) -> None:
    """Per-layer firing rates, non-zero fan-out, SynOps, energy proxy and weight memory of MODEL."""
    setup_logging()
    for path, what in ((plot_path, "plot"), (json_path, "JSON report")):
        if path is not None:
            check_output(path, what=what, inputs=[model, data_path, baseline])
    graph = load_model(model)
    opts = {"strict": strict, "dt": dt, "integrator": integrator, "reset": reset, "cuba_order": cuba_order,
            "precision": precision}
    bg = load_model(baseline) if baseline else None  # both models checked before any simulation
    cfg = sim_config(graph, model, **opts)
    ds = load_data_for(Walker(graph, cfg), data_path, limit)
    click.echo(f"energy proxy E = E_AC x SynOps + E_MAC x first-layer MACs, E_AC = {e_ac} pJ, E_MAC = {e_mac} pJ; "
               "SynOps counted with the exact non-zero fan-out of every input position", err=True)
    reports = []
    if bg is not None:
        bcfg = sim_config(bg, baseline, **opts)
        reports.append(energy_report(bg, ds, bcfg, name=Path(baseline).name, batch_size=batch_size, e_ac=e_ac,
                                     e_mac=e_mac, progress=True))
    reports.append(energy_report(graph, ds, cfg, name=Path(model).name, batch_size=batch_size, e_ac=e_ac,
                                 e_mac=e_mac, progress=True))
    for r in reports:
        click.echo(r.table())
        click.echo("")
    if baseline:
        click.echo(compare_table(reports[0], reports[1]))
    if plot_path:
        plot_reports(reports, plot_path)
        click.echo(f"wrote {plot_path}", err=True)
    if json_path:
        write_json(json_path, {"reports": [r.to_dict() for r in reports]})
        click.echo(f"wrote {json_path}", err=True)
