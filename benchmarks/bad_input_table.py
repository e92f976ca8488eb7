"""Run every bad-input case of the command line (tests/bad_input_cases.py) in its own process, with a time
limit, and write docs/bad_input.md: one row per case with its exit code and message, and the count of
tracebacks, hangs and silent results (all must be 0).

    PYTHONPATH=. python benchmarks/bad_input_table.py [--jobs 2] [--timeout 120] [-o docs/bad_input.md]

Exit code 1 when any case misbehaves (the table lists what).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from bad_input_cases import CASES, Case, expand, make_base, problems, snapshot


def run_case(i: int, case: Case, base: dict[str, Path], tmp: Path, timeout: float) -> dict:
    work = tmp / f"case{i:03d}"
    work.mkdir()
    argv = expand(case, base, work)
    before = snapshot(work, base["m"].parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-m", "sbc_onnx", *argv], check=False, capture_output=True,
                           text=True, timeout=timeout, env=env, cwd=work)
        code, err = r.returncode, r.stderr
    except subprocess.TimeoutExpired as e:
        code, err = None, (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else ""
    seconds = time.perf_counter() - t0
    found = problems(case, code, err, before, snapshot(work, base["m"].parent))
    return {"case": case, "argv": argv, "code": code, "stderr": err.strip(), "problems": found, "seconds": seconds,
            "work": work}


def _cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _shorten(s: str, base: Path, work: Path) -> str:
    return s.replace(str(work), "W").replace(str(base), "B")


def table(rows: list[dict], base: Path) -> str:
    bad = [r for r in rows if r["problems"]]
    count = {k: sum(any(p.startswith(k) for p in r["problems"]) for r in rows) for k in ("traceback", "hang", "silent")}
    out = ["# Bad input: every case, its exit code and message", "",
           "Produced by `benchmarks/bad_input_table.py` from the cases in `tests/bad_input_cases.py` (the same list",
           "`tests/test_bad_input.py` runs in process). Each case runs `python -m sbc_onnx ...` in its own process",
           "with a time limit. `B/` is the directory of the valid model (`m.nir`, `m.onnx`) and dataset (`c.npz`),",
           "`W/` the case's own work directory (a name there exists only if the case builds it). Expected for every",
           "case: exit code 2, one `error:` line on stderr, nothing written, the inputs unchanged.", "",
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
        with ThreadPoolExecutor(args.jobs) as pool:
            rows = list(pool.map(lambda ic: run_case(*ic, base, tmp, args.timeout), enumerate(cases)))
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
