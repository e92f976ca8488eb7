"""Check the citations of the built-in hardware profiles against local clones of the cited repositories.

Every cited constraint names a repository, a commit, a file, a line and the quoted text at that line
(sbc_onnx/hardware/profiles/*.json). This script reads each file at its commit with `git show` and
reports every citation whose line does not hold the quote. It needs network-free clones, one per
repository, found as ROOT/<owner>+<name>/repo or ROOT/<owner>/<name> (a bare or normal git directory):

    python benchmarks/verify_profile_sources.py ROOT

Exit code 0 when every citation of a repository found under ROOT matches; repositories not found are
listed and skipped. CI does not run it (no clones there); run it when a profile changes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sbc_onnx.hardware.profiles import PROFILE_DIR


def _clone(root: Path, repo: str) -> Path | None:
    owner, name = repo.split("/")
    for cand in (root / f"{owner}+{name}" / "repo", root / owner / name):
        if cand.exists():
            return cand
    return None


def _line(clone: Path, commit: str, file: str, line: int) -> str | None:
    out = subprocess.run(["git", "-C", str(clone), "show", f"{commit}:{file}"], capture_output=True, text=True,
                         check=False)
    lines = out.stdout.splitlines()
    return lines[line - 1] if out.returncode == 0 and 0 < line <= len(lines) else None


def verify(root: Path) -> tuple[list[str], set[str]]:
    """(mismatches, repositories not found under root)."""
    bad, missing = [], set()
    for path in sorted(PROFILE_DIR.glob("*.json")):
        for field, v in json.loads(path.read_text()).items():
            src = v.get("source") if isinstance(v, dict) else None
            if not src or "repo" not in src:
                continue
            clone = _clone(root, src["repo"])
            if clone is None:
                missing.add(src["repo"])
                continue
            text = _line(clone, src["commit"], src["file"], src["line"])
            # notebook lines are JSON strings: compare the quote with the raw text
            if text is None or src.get("quote", "") not in text.replace('\\"', '"'):
                bad.append(f"{path.stem}.{field}: {src['repo']} {src['file']}:{src['line']} does not hold "
                           f"{src.get('quote')!r} (found {text!r})")
    return bad, missing


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    bad, missing = verify(Path(argv[0]))
    for m in sorted(missing):
        print(f"skipped (no clone): {m}")
    for b in bad:
        print(f"MISMATCH {b}")
    print(f"{len(bad)} mismatch(es)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
