"""Run every bad-input case of the command line (tests/bad_input_cases.py) in its own process, with a time
limit, and write docs/bad_input.md: one row per case with its exit code and message, and the count of
tracebacks, hangs and silent results (all must be 0).

    PYTHONPATH=. python benchmarks/bad_input_table.py [--jobs 2] [--timeout 120] [-o docs/bad_input.md]

Exit code 1 when any case misbehaves (the table lists what).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from bad_input_cases import CASES, Case, expand, make_base, problems, snapshot


def _child(argv: list[str], work: Path) -> None:
    """In the forked process: what `python -m sbc_onnx ARGV` does, stdout/stderr to files in `work/..`."""
    out = os.open(work.parent / f"{work.name}.out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open(work.parent / f"{work.name}.err", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(out, 1)
    os.dup2(err, 2)
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - the process ends with os._exit
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    os.chdir(work)
    code = 1
    try:
        from sbc_onnx.cli import main as cli_main

        code = cli_main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - what the interpreter would print: the traceback
        traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_cases(cases: list[Case], base: dict[str, Path], tmp: Path, jobs: int, timeout: float) -> list[dict]:
    """Each case in a process forked from this one (the package is imported once, here), at most `jobs` at
    a time; a case still running after `timeout` seconds is killed and counted as a hang."""
    from sbc_onnx.cli import main as _  # noqa: F401 - imported before forking

    ctx = mp.get_context("fork")
    rows: list[dict] = []
    pending = list(enumerate(cases))
    running: list[tuple[dict, mp.Process]] = []
    while pending or running:
        while pending and len(running) < jobs:
            i, case = pending.pop(0)
            work = tmp / f"case{i:03d}"
            work.mkdir()
            argv = expand(case, base, work)
            row = {"i": i, "case": case, "argv": argv, "work": work, "t0": time.perf_counter(),
                   "before": snapshot(work, base["m"].parent)}
            proc = ctx.Process(target=_child, args=(argv, work))
            proc.start()
            running.append((row, proc))
        row, proc = running[0]
        proc.join(max(0.0, timeout - (time.perf_counter() - row["t0"])))
        done = [(r, p) for r, p in running if not p.is_alive()] or [(row, proc)]
        for r, p in done:
            if p.is_alive():
                p.kill()
                p.join()
                r["code"] = None
            else:
                r["code"] = p.exitcode
            running.remove((r, p))
            rows.append(_finish(r, base))
    return sorted(rows, key=lambda r: r["i"])


def _finish(row: dict, base: dict[str, Path]) -> dict:
    work, case = row["work"], row["case"]
    row["seconds"] = time.perf_counter() - row["t0"]
    err = (work.parent / f"{work.name}.err").read_text(errors="replace")
    row["stderr"] = err.strip()
    row["problems"] = problems(case, row["code"], err, row["before"], snapshot(work, base["m"].parent))
    print(f"{row['i'] + 1:3d} {case.id}: exit {row['code']} in {row['seconds']:.1f} s"
          + (f" NOT AS EXPECTED {row['problems']}" if row["problems"] else ""), file=sys.stderr, flush=True)
    return row


def _cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _shorten(s: str, base: Path, work: Path) -> str:
    return s.replace(str(work), "W").replace(str(base), "B")


def table(rows: list[dict], base: Path) -> str:
    bad = [r for r in rows if r["problems"]]
    count = {k: sum(any(p.startswith(k) for p in r["problems"]) for r in rows) for k in ("traceback", "hang", "silent")}
    out = ["# Bad input: every case, its exit code and message", "",
           "Produced by `benchmarks/bad_input_table.py` from the cases in `tests/bad_input_cases.py` (the same",
           "list `tests/test_bad_input.py` runs in process). Each case runs what `python -m sbc_onnx ...` runs, in",
           "its own process (forked from the runner) with a time limit. `B/` is the directory of the valid model",
           "(`m.nir`, `m.onnx`) and dataset (`c.npz`), `W/` the case's own work directory (a name there exists",
           "only if the case builds it). Expected for every case: exit code 2, one `error:` line on stderr (no",
           "traceback), nothing written, the inputs unchanged, the process ended within the limit.", "",
           (f"**{len(rows)} cases: {count['traceback']} tracebacks, {count['hang']} hangs, {count['silent']} silent "
            f"results (exit 0), {len(bad)} cases not as expected.**"), ""]
    groups: dict[str, int] = {}
    for r in rows:
        groups[r["case"].group] = groups.get(r["case"].group, 0) + 1
    out += ["| group | cases |", "|---|---|"] + [f"| {g} | {n} |" for g, n in groups.items()] + [""]
    out += ["| # | group | case | command | exit | message |", "|---|---|---|---|---|---|"]
    for i, r in enumerate(rows, 1):
        cmd = "sbc-onnx " + " ".join(_shorten(a, base, r["work"]) for a in r["argv"])
        msg = _shorten(r["stderr"], base, r["work"]) if r["code"] is not None else "(did not end)"
        if r["problems"]:
            msg += " **NOT AS EXPECTED: " + "; ".join(r["problems"]) + "**"
        out.append(f"| {i} | {r['case'].group} | {_cell(r['case'].id)} | `{_cell(cmd)}` | "
                   f"{'-' if r['code'] is None else r['code']} | {_cell(msg)} |")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("-o", "--output", type=Path, default=ROOT / "docs" / "bad_input.md")
    ap.add_argument("-k", default="", help="only the cases whose id contains this text")
    args = ap.parse_args()
    cases = [c for c in CASES if args.k in c.id]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        base = make_base(tmp / "base")
        rows = run_cases(cases, base, tmp, args.jobs, args.timeout)
        text = table(rows, tmp / "base")
    args.output.write_text(text, encoding="utf-8")
    bad = [r for r in rows if r["problems"]]
    for r in bad:
        print(f"NOT AS EXPECTED: {r['case'].id}: {'; '.join(r['problems'])}\n    {r['stderr'][-600:]}",
              file=sys.stderr)
    print(f"{len(rows)} cases, {len(bad)} not as expected; wrote {args.output}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
