"""benchmarks/accuracy.py's SEW-ResNet grid (issue 13): every setting the issue asks for is planned once, LAMP
p = 2 and p = 3 are told apart in the report, and a run of one network rewrites only that network's report."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def acc():
    spec = importlib.util.spec_from_file_location("bench_accuracy", ROOT / "benchmarks" / "accuracy.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_sew_plan_covers_the_grid_once(acc):
    jobs = acc.plan([acc.SEW])
    keys = [acc.job_key(j) for j in jobs]
    assert len(keys) == len(set(keys))
    assert all(j["net"] == acc.SEW for j in jobs)
    got = {(j["kind"], j["method"], j["draw"], j["sparsity"], j["bits"], json.dumps(j["opts"])) for j in jobs}
    want = {("dense", "dense", None, None, None, "{}")}
    for m in acc.PRUNE_METHODS:
        for d in [0] if m in acc.DETERMINISTIC else [0, 1, 2]:
            for s in (0.5, 0.7, 0.8, 0.9, 0.95):
                for opts in ({}, {"lamp_p": 3.0}):
                    want.add(("sparsity", m, d, s, None, json.dumps(opts)))
    for m in ("sbc", "obc", "rtn"):
        for d in [0] if m in acc.DETERMINISTIC else [0, 1, 2]:
            for b in (4, 3, 2):
                want.add(("bits", m, d, None, b, "{}"))
    assert got == want
    # the acceptance settings come first: dense, then 80 / 90 % and 2 bits of draw 0
    assert jobs[0]["kind"] == "dense"
    first = jobs[1:16]  # sbc, obc, magnitude at 80 / 90 % with p = 2 and 3; sbc, obc, rtn at 2 bits
    assert {j["draw"] for j in first} == {0}
    assert {j["sparsity"] for j in first if j["kind"] == "sparsity"} == {0.8, 0.9}


def test_sew_report_separates_lamp_p_and_rewrites_only_its_file(acc, tmp_path, monkeypatch):
    def key(m, s, opts, draw=0):
        return acc.job_key(acc.job(acc.SEW, "sparsity", m, draw, sparsity=s, opts=opts))

    cache = {acc.job_key(acc.job(acc.SEW, "dense", "dense", None)): {"acc": 0.96, "eval_s": 1.0}}
    for m, p2, p3 in (("sbc", 0.91, 0.42), ("obc", 0.81, 0.33), ("magnitude", 0.51, 0.22)):
        cache[key(m, 0.9, {})] = {"acc": p2, "eval_s": 1.0, "compress_s": 1.0}
        cache[key(m, 0.9, {"lamp_p": 3.0})] = {"acc": p3, "eval_s": 1.0, "compress_s": 1.0}
    path = tmp_path / "cache.json"
    path.write_text(json.dumps(cache))
    other = tmp_path / "accuracy_mnist.md"
    other.write_text("untouched")
    monkeypatch.setattr(acc, "CACHE", path)
    monkeypatch.setattr(acc, "RES", tmp_path)
    monkeypatch.setattr(acc, "plot", lambda *a, **k: None)
    acc.write_reports(acc.PROTOCOL_TEXT, "", [acc.SEW])
    assert other.read_text() == "untouched"
    assert not (tmp_path / "accuracy_nmnist.md").exists()
    text = (tmp_path / "accuracy_sew_resnet.md").read_text()
    p2, p3 = text.split("LAMP p=2 allocation")[1], text.split("LAMP p=3 allocation")[1]
    row = next(line for line in p2.splitlines() if line.startswith("| sbc |"))
    assert "91.0" in row and "42.0" not in row
    row = next(line for line in p3.splitlines() if line.startswith("| sbc |"))
    assert "42.0" in row and "91.0" not in row
    verdict = next(line for line in text.splitlines() if line.startswith("| 90 %, LAMP p=2"))
    assert verdict.endswith("yes (draws missing) |")
