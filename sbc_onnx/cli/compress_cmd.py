"""`sbc-onnx compress`: one-shot pruning and/or quantization of a NIR or ONNX model.

One path: the options make a `Plan`; `--target` constrains it to what the chip stores (hardware/deploy.py)
and adds the folding into an integer model and its float twin; every other option works the same way.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..compress import ALLOCATIONS, METHODS, SCHEMES
from ..distributed import check_options, guard
from ..distributed.cluster import check_reachable
from ..evaluate import evaluate
from ..hardware.deploy import compress_for_target, deployment_paths, target_plan, write_deployment
from ..hardware.energy import synops_model
from ..hardware.profiles import load_profile
from ..io.models import check_format, load_model, model_format, save_model
from ..io.paths import check_output, existing_file
from ..io.sizes import file_sizes, storage_model
from ..pipeline import (GRANULARITIES, Plan, check_budget_floor, check_resume, compress, compression_metadata,
                        memory_plan)
from ..sim import Walker
from . import cli
from .hardware_cmd import CheckFailed
from .model_cmd import load_data_for, print_eval, setup_logging, sim_config, sim_options
from .output import write_json
from .params import COUNT, NON_NEGATIVE, POSITIVE, FiniteFloat

METHOD_HELP = "; ".join(f"{m.name}: {m.summary}" for m in METHODS.values())


@cli.command("compress")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--calib", "calib_path", required=True, type=click.Path(dir_okay=False),
              help="Calibration dataset .npz (a few samples per class suffice; labels unused).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Output model (.nir or .onnx; format by extension).")
@click.option("--sparsity", type=FiniteFloat(0, 1, max_open=True), default=None,
              help="Overall fraction of weights to prune, in [0, 1), e.g. 0.9.")
@click.option("--bits", type=click.IntRange(2, 8), default=None, help="Quantize weights to this many bits.")
@click.option("--budget", default=None,
              help="Fit a whole-model budget instead of giving --sparsity/--bits: memory=SIZE (weight storage of "
                   "the .onnx output, e.g. 10KiB) or synops=COUNT (synaptic operations per calibration sample, "
                   "e.g. 2M). Each layer's sparsity and bits are chosen by the least summed layer objective. "
                   "With --target: synops only, each layer's sparsity at the chip's weight width.")
@click.option("--budget-search", type=click.IntRange(0), default=0, show_default=True,
              help="With --budget: score this many candidate plans (the budget's knapsack with searched per-layer "
                   "cost weights; all fit the budget) by the distance between the dense and the compressed "
                   "network's outputs on the calibration data, and keep the closest (0: the plain plan). Each "
                   "candidate is one simulation of the calibration set.")
@click.option("--search-seed", type=click.IntRange(0), default=0, show_default=True,
              help="Seed of --budget-search (the same seed gives the same plan).")
@click.option("--search-score", type=click.Choice(["counts", "xent"]), default="counts", show_default=True,
              help="What --budget-search minimises on the calibration data: counts, the squared difference of the "
                   "output spike counts to the dense network's (relative); xent, the cross-entropy of the "
                   "compressed outputs against the dense network's prediction.")
@click.option("--reset-aware", is_flag=True,
              help="Reset-aware SMP objective: each layer's kernel shortened by its neuron's calibration firing rate "
                   "(reset to v_reset forgets the integrated input; one more calibration pass). sbc, sbc-fast only.")
@click.option("--repair", is_flag=True,
              help="After compression, rescale each spiking neuron's threshold per channel so that its "
                   "calibration firing rate matches the dense model's (weights unchanged).")
@click.option("--method", type=click.Choice(list(METHODS)), default="sbc", show_default=True, help=METHOD_HELP + ".")
@click.option("--pattern", default=None, help="N:M semi-structured sparsity along each row's inputs, e.g. 2:4.")
@click.option("--allocation", type=click.Choice(ALLOCATIONS), default="lamp", show_default=True,
              help="How the overall sparsity is split across layers: lamp (the paper's), uniform, global "
                   "(magnitude), obs (global k smallest ExactOBS trace scores, each divided by its layer's "
                   "dense objective; sbc and obc reuse the traces for their pruning). Results: "
                   "benchmarks/results/.")
@click.option("--lamp-p", type=POSITIVE, default=2.0, show_default=True, help="LAMP score exponent (> 0).")
@click.option("--grid", type=click.Choice(SCHEMES), default=None,
              help="Quantization grid (symmetric: 2^b levels incl. the extra negative one, as the paper) "
                   "[default: symmetric, or the --target chip's].")
@click.option("--granularity", type=click.Choice(GRANULARITIES), default=None,
              help="One quantization scale per output channel or per layer [default: channel, or the "
                   "--target chip's].")
@click.option("--damp", type=NON_NEGATIVE, default=0.01, show_default=True,
              help="Relative Hessian damping, a finite number >= 0 (0: none unless the factorization fails); "
                   "escalates x10 (0 -> 0.01) up to 1.0 on failure, then the layer falls back to magnitude/RTN.")
@click.option("--sequential/--dense-calibration", default=False, show_default=True,
              help="Collect each layer's Hessian with the already-compressed upstream layers.")
@click.option("--exact-resolve", is_flag=True, help="Re-solve every row exactly on its kept weights "
              "after mask selection (sbc-fast, magnitude, wanda).")
@click.option("--calib-limit", type=COUNT, default=None, help="Use only the first N (>= 1) calibration samples.")
@click.option("--batch-size", type=COUNT, default=32, show_default=True)
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
              help="Write the full report as JSON.")
@click.option("--eval", "eval_path", type=click.Path(dir_okay=False), default=None,
              help="Evaluate dense and compressed accuracy on this dataset.")
@click.option("--eval-limit", type=COUNT, default=None, help="Evaluate only the first N (>= 1) samples.")
@click.option("--readout", type=click.Choice(["count", "count+potential", "potential"]), default="count",
              show_default=True)
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@click.option("--max-memory", default=None,
              help="Peak memory budget, e.g. 8GiB (B, KB, KiB, MB, MiB, GB, GiB) [default: the machine's available "
                   "memory]. Layers whose Hessians do not fit together are calibrated in several passes and "
                   "spilled to disk; a budget below the largest layer's need is refused. The plan is printed first.")
@click.option("--resume", "resume", type=click.Path(file_okay=False), default=None,
              help="Work folder for a long run: spilled Hessians and every finished layer are kept there; run the "
                   "same command again with it to continue after an interruption (refused for another model, "
                   "options or calibration data).")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Spread the calibration and the layers over a local Ray runtime of N worker processes (one "
                   "thread each); the result is the single-process one. Needs: pip install 'sbc-onnx[distributed]'.")
@click.option("--ray-address", default=None,
              help="Run on the Ray cluster at this address instead (e.g. HEAD:6379, or auto for the one `ray start` "
                   "runs here); every node needs sbc-onnx and the input files at the same paths.")
@click.option("--target", default=None, help="Hardware profile (see `sbc-onnx profiles`): bits, grid and scale "
              "granularity from the profile, weight scales folded into the neurons; writes OUTPUT (integer .nir) "
              "and OUTPUT.float.nir (dequantized twin). See docs/deploying.md.")
@sim_options
def compress_cmd(model, calib_path, output, sparsity, bits, budget, budget_search, search_seed, search_score, reset_aware, repair, method, pattern, allocation, lamp_p, grid,
                 granularity, damp, sequential, exact_resolve, calib_limit, batch_size, report_path, eval_path,
                 eval_limit, readout, force, max_memory, resume, workers, ray_address, target, dt, integrator, reset, cuba_order, precision, strict) -> None:
    """Compress MODEL one-shot and write the result to OUTPUT (only weights change)."""
    setup_logging()
    options = dict(sparsity=sparsity, bits=bits, method=method, pattern=pattern, allocation=allocation,
                   lamp_p=lamp_p, grid=grid, granularity=granularity, sequential=sequential, rel_damp=damp,
                   exact_resolve=exact_resolve, budget=budget, repair=repair, budget_search=budget_search,
                   search_seed=search_seed, search_score=search_score, reset_aware=reset_aware)
    profile = load_profile(target) if target else None
    plan = target_plan(profile, **options) if profile else Plan.build(**options)  # checked before any work
    ray = None
    if workers is not None or ray_address is not None:
        ray = check_options(workers, ray_address)  # Ray installed, one of the two: before any work
    outputs = _output_paths(model, output, force, profile is not None)
    memory_budget = plan.budget is not None and plan.budget.kind == "memory"
    storage = storage_model(output) if memory_budget else None  # a format with a storage model, before any work
    _check_files(model, calib_path, eval_path, report_path)
    if ray is not None and not guard.is_child() and not ray.is_initialized():
        if ray_address is not None:
            check_reachable(ray_address)
        # Ray ends a driver whose cluster is lost by itself: run the command in a guarded child (guard.py)
        argv = (click.get_current_context().find_root().obj or {}).get("argv") or sys.argv[1:]
        raise click.exceptions.Exit(guard.supervise(argv))
    guard.child_resume(resume)
    graph = load_model(model)
    for p in outputs:
        check_format(graph, p)  # e.g. max pooling to .nir: refused before any work
    cfg = sim_config(graph, model, strict=strict, dt=dt, integrator=integrator, reset=reset, cuba_order=cuba_order,
                     precision=precision)
    walker = Walker(graph, cfg)
    calib = load_data_for(walker, calib_path, calib_limit)
    test = load_data_for(walker, eval_path, eval_limit, labels=True) if eval_path else None  # checked up front
    check_budget_floor(graph, plan, storage, plan.layers)  # before the first line of progress
    if resume is not None:
        check_resume(graph, calib, plan, resume, cfg=cfg, batch_size=batch_size)
    memory = memory_plan(graph, calib, plan, cfg=cfg, batch_size=batch_size, max_memory=max_memory)
    click.echo(memory.describe(), err=True)  # too small a budget was refused above
    click.echo(f"[1/3] calibrating {model} on {calib.n} samples x {calib.steps} steps "
               f"(dt={cfg.dt:g}, {cfg.integrator}, reset {cfg.reset}); {plan.describe()}"
               + (f"; target {profile.summary()}" if profile else ""), err=True)
    if profile:
        int_g, float_g, deploy = compress_for_target(graph, calib, profile, plan, cfg=cfg, batch_size=batch_size,
                                                     progress=True, max_memory=memory.budget, resume=resume,
                                                     workers=workers, ray_address=ray_address,
                                                     **_budget_inputs(plan, graph, calib, cfg, storage, batch_size))
        report, models = deploy.compression, {"integer": int_g, "twin": float_g}
    else:
        new, report = compress(graph, calib, plan, cfg=cfg, batch_size=batch_size, progress=True,
                               max_memory=memory.budget, resume=resume, workers=workers, ray_address=ray_address,
                               **_budget_inputs(plan, graph, calib, cfg, storage, batch_size))
        deploy, models = None, {"compressed": new}
    _show(report, deploy)
    _save(models, outputs, model, cfg, report, deploy, dense=graph)
    if test is not None:
        _evaluate(walker, models, test, readout, batch_size, report, deploy)
    if report_path:
        data = {**report.to_dict(), **({"target": deploy.to_dict()} if deploy else {})}
        write_json(report_path, data)
        click.echo(f"wrote report {report_path}", err=True)
    if deploy is not None and deploy.errors:  # written and listed, but the chip cannot run it: exit 1 like `check`
        raise CheckFailed(f"{outputs[0]} violates {len(deploy.errors)} constraint(s) of {deploy.profile} (listed "
                          "above); the files are written")


def _budget_inputs(plan, graph, calib, cfg, storage, batch_size) -> dict:
    """What a budget counts with: the output's storage model (memory) or the dense SynOps (synops)."""
    if plan.budget is None:
        return {}
    if plan.budget.kind == "memory":
        return {"storage": storage}
    return {"synops": synops_model(graph, calib, cfg, batch_size=batch_size)}


def _output_paths(model: str, output: str, force: bool, deployment: bool) -> list[Path]:
    """The files the command will write (a deployment writes the integer model and its float twin),
    checked before any work: known format, not the input, not overwritten without --force, in a writable
    directory."""
    paths = list(deployment_paths(output)) if deployment else [Path(output)]
    model_format(output)  # fail early on an unknown extension
    for p in paths:
        check_output(p, what="output model", inputs=[model], force=force)
    return paths


def _check_files(model: str, calib: str, eval_path: str | None, report: str | None) -> None:
    """Every input exists and the report can be written, before the model is even loaded."""
    for path, what in ((model, "model file"), (calib, "calibration dataset"), (eval_path, "--eval dataset")):
        if path is not None:
            existing_file(path, what)
    if report is not None:
        check_output(report, what="report", inputs=[model, calib, eval_path])


def _show(report, deploy) -> None:
    click.echo(report.table())
    if deploy is not None:
        click.echo(deploy.table())
    for note in report.notes + (deploy.notes if deploy else []):
        click.echo(f"note: {note}", err=True)
    s = report.seconds
    click.echo(f"[2/3] calibration {s['calibration']:.1f} s, compression {s['compression']:.1f} s, "
               f"spike-damage measurement {s['damage']:.1f} s", err=True)
    if deploy is not None:
        errors = [v for v in deploy.violations if v.severity == "error"]
        for v in deploy.violations:
            click.echo(v.line())
        click.echo(f"check against {deploy.profile}: {len(errors)} violation(s)" + ("" if errors else " -- OK"),
                   err=True)


def _save(models: dict, outputs: list[Path], model: str, cfg, report, deploy, dense) -> None:
    """Write the models, then report each file's size against the dense model in the same format."""
    if deploy is not None:
        a, b = write_deployment(models["integer"], models["twin"], outputs[0], cfg, deploy)
        click.echo(f"wrote {a} (integer weights and neuron parameters) and {b} (dequantized float twin)")
        written = [a, b]
    else:
        source = model if model_format(model) == "onnx" else None
        written = [save_model(models["compressed"], outputs[0], cfg=cfg, source=source, quant=report.quant,
                              metadata=compression_metadata(report))]
        click.echo(f"wrote {written[0]}")
    for path in written:
        sizes = file_sizes(path, dense, cfg)
        report.files.append(sizes.to_dict())
        click.echo(sizes.table())


def _evaluate(walker: Walker, models: dict, test, readout: str, batch_size: int, report, deploy) -> None:
    """Accuracy of the dense model and of every written model; the first written one is the report's
    compressed accuracy (a deployment's integer model)."""
    click.echo(f"[3/3] evaluating the {', '.join(['dense', *models])} models", err=True)
    results = {"dense": evaluate(walker, test, readout=readout, batch_size=batch_size * 2, progress=True)}
    for label, g in models.items():
        results[label] = evaluate(Walker(g, walker.cfg), test, readout=readout, batch_size=batch_size * 2,
                                  progress=True)
    for label, r in results.items():
        click.echo(f"{label:<10} {r.line()}")
    first = next(iter(models))
    report.accuracy_dense, report.accuracy_compressed = results["dense"].accuracy, results[first].accuracy
    if deploy is not None:
        deploy.accuracy_twin = results["twin"].accuracy
    click.echo(f"{first} model:")
    print_eval(results[first])
