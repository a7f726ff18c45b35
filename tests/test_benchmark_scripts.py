"""The benchmark scripts start as documented (`python benchmarks/<name>.py ...`, where Python puts
benchmarks/ first on sys.path, not the repository root): their own imports resolve."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[1]


def _run(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.mark.parametrize("script", ["decode_step", "sampler", "shared_prefix", "real_shapes"])
def test_help_runs_as_a_script(script, tmp_path):
    proc = _run(str(_REPO / "benchmarks" / f"{script}.py"), "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage" in proc.stdout


def test_real_shapes_plans_every_program_as_a_script(tmp_path):
    # --report-only builds every (model, devices, program) spec, reading each preset's
    # rl.grad_accum, and compiles nothing.
    rows = tmp_path / "rows.jsonl"
    rows.write_text("")
    proc = _run(str(_REPO / "benchmarks" / "real_shapes.py"), "--report-only", "--json",
                str(rows), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"results": []}
