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


def test_real_shapes_full_depth_report_shows_compiled_rows_and_refusals(tmp_path):
    # With --full-depth each (model, devices, program) is one compile at the model's depth,
    # reported as compiled; a program the TPU compiler refused (RESOURCE_EXHAUSTED) is reported
    # as not fitting instead of being fitted or dropped.
    from configs.curriculum import get_config

    base = {"model": "qwen2_5_vl_3b", "program": "update_micro", "depth": [36, 28, 4],
            "grad_accum": int(get_config("qwen2_5_vl_3b").rl.grad_accum), "compile_s": 1.0}
    fits = {**base, "devices": 8, "topology": "v5p:2x2x2", "arg": 2**30, "out": 2**29,
            "alias": 2**29, "temp": 20 * 2**30, "flops": 1e15}
    fits["peak"] = fits["arg"] + fits["out"] + fits["temp"] - fits["alias"]
    refused = {**base, "devices": 4, "topology": "v5p:2x2x1",
               "does_not_fit": "RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm."}
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps(fits) + "\n" + json.dumps(refused) + "\n")
    proc = _run(str(_REPO / "benchmarks" / "real_shapes.py"), "--report-only", "--full-depth",
                "--models", "qwen2_5_vl_3b", "--programs", "update_micro", "--topology",
                "4=v5p:2x2x1,8=v5p:2x2x2", "--json", str(rows), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = proc.stdout
    assert ("| qwen2_5_vl_3b | 8 | update_micro, as compiled at depth "
            "(36, 28, 4) | 1.0 | 0.5 | 0.5 | 20.0 | 21.0 |") in table, table
    assert "**does not fit**: RESOURCE_EXHAUSTED" in table, table
    results = json.loads(table.strip().splitlines()[-1])["results"]
    assert [r["devices"] for r in results] == [8, 4]
