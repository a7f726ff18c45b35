"""The RewardMap ablation on the map world, as one resumable command.

    python -m rewardmap_jax.experiments.ablation --seeds 3
        [--scale full|quick] [--config configs/ablation.py] [--workdir runs/ablation]
        [--results experiments/results/ablation.jsonl] [--arms sparse_rl,rewardmap] [--dry_run]
        [--world route_grid]

For every seed: one supervised warm start (`configs/ablation.py:warm_start`), then every arm
(`configs/ablation.py:<arm>`, the same base config with the overrides of `ARMS`) starts from that
warm start's params (`train.init_from`) and trains for the same number of steps. Each run is a
plain `python -m rewardmap_jax.main` subprocess (its command is printed and logged in
`<workdir>/<arm>/seed<k>/train.log`); a finished run (its `train_summary.json` says it reached
its last step, or its row is already in `--results`, e.g. committed from another checkout) is
skipped, an interrupted one resumes from its latest checkpoint; a seed's warm start is re-run
(deterministically) only when an arm of that seed still needs its checkpoint. After each run
its held-out results are collected (`collect.summarize_run`) into one line of `--results`
(rewritten sorted after every run, so the file only depends on the runs), and a summary of the
arms is printed at the end. docs/reproduction.md is generated from that file by
`scripts/make_reproduction.py`. `--scale quick` runs the same plan at the config's `quick` sizes
(minutes: a check that every arm runs, not a measurement) into `runs/ablation_quick` and
`experiments/results/ablation_quick.jsonl`. `--world W` runs the same study on another map world
(every run gets `--config.data.mapworld_world=W`; default workdir and results gain `_W`); a
results file whose rows ran on another world than the study's is refused before any compute.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from rewardmap_jax.experiments import collect, tables
from rewardmap_jax.mapworld.generator import get_world

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = ROOT / "configs" / "ablation.py"
WARM_START = "warm_start"


def load_study(config_path: str | Path) -> ModuleType:
    """The study's config module (it defines `ARMS`, `WARM_START_OVERRIDES`, `get_config`)."""
    path = Path(config_path)
    if not path.exists():
        raise FileNotFoundError(f"no study config {path}")
    spec = importlib.util.spec_from_file_location(f"_study_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in ("ARMS", "get_config"):
        if not hasattr(module, name):
            raise ValueError(f"{path} defines no {name}")
    return module


def run_dir(workdir: Path, arm: str, seed: int) -> Path:
    return workdir / arm / f"seed{seed}"


def is_finished(path: Path) -> bool:
    """True when the run in `path` reached its last step (not preempted)."""
    summary = path / "train_summary.json"
    if not summary.exists():
        return False
    s = json.loads(summary.read_text())
    return not s.get("preempted") and int(s.get("step", -1)) == int(s.get("total", -2))


def results_path(scale: str, world: str = "") -> Path:
    """The committed metric rows of a study scale (on `world` when it is not the study's)."""
    name = "ablation" + ("" if scale == "full" else f"_{scale}") + (f"_{world}" if world else "")
    return ROOT / "experiments" / "results" / f"{name}.jsonl"


def command(config_path: Path, arm: str, seed: int, path: Path, init_from: Path | None,
            scale: str = "full", world: str = "") -> list[str]:
    """The run's `rewardmap_jax.main` command line (`world`: a map world other than the
    study config's, as an override)."""
    preset = arm if scale == "full" else f"{arm}@{scale}"
    cmd = [sys.executable, "-m", "rewardmap_jax.main", "--config", f"{config_path}:{preset}",
           "--workdir", str(path), f"--config.seed={seed}"]
    if init_from is not None:
        cmd.append(f"--config.train.init_from={init_from}")
    if world:
        cmd.append(f"--config.data.mapworld_world={world}")
    return cmd


def check_worlds(rows: dict[tuple[str, int], dict[str, Any]], world: str, path: Path) -> None:
    """Refuses a results file holding runs on another map world than the study's: its rows
    would count as finished runs of this study."""
    other = sorted({str(r["world"]) for r in rows.values() if r.get("world", world) != world})
    if other:
        raise SystemExit(f"{path} holds runs on map world {', '.join(other)}, this study runs "
                         f"on {world!r}: pass another --results (and --workdir)")


def git_commit() -> str:
    """HEAD of the checkout the study runs from (`+dirty` when files differ from it)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty.strip() else "")


def last_step(path: Path) -> int | None:
    """The step of the last line of `path/metrics.jsonl` (read from its tail), or None."""
    metrics = path / "metrics.jsonl"
    try:
        with open(metrics, "rb") as f:
            f.seek(max(0, metrics.stat().st_size - 4096))
            tail = f.read().decode(errors="replace").strip().splitlines()
        return int(json.loads(tail[-1])["step"]) if tail else None
    except (OSError, ValueError, KeyError, IndexError):
        return None


def train(cmd: Sequence[str], path: Path, progress: Any = None) -> dict[str, Any]:
    """Runs one training subprocess (output appended to `path/train.log`); returns timing.
    `progress(step)` is called every few seconds with the run's latest logged step."""
    path.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()[0]
    t0 = time.time()
    with open(path / "train.log", "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            while True:
                try:
                    proc.wait(timeout=5)
                    break
                except subprocess.TimeoutExpired:
                    if progress is not None:
                        progress(last_step(path))
        except BaseException:  # Ctrl-C / SIGTERM: stop the run too (it resumes later)
            proc.terminate()
            proc.wait()
            raise
    if proc.returncode != 0:
        tail = (path / "train.log").read_text().splitlines()[-20:]
        raise RuntimeError(f"run {path} failed (exit {proc.returncode}):\n" + "\n".join(tail))
    if not is_finished(path):
        raise RuntimeError(f"run {path} stopped before its last step (preempted?); rerun the "
                           "study to resume it")
    return {"wall_s": round(time.time() - t0, 1), "load_start": round(load_start, 2),
            "load_end": round(os.getloadavg()[0], 2)}


def read_results(path: Path) -> dict[tuple[str, int], dict[str, Any]]:
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["arm"], int(r["seed"])): r for r in rows}


def write_results(path: Path, rows: dict[tuple[str, int], dict[str, Any]], order: Sequence[str]
                  ) -> None:
    """All rows, sorted by (arm in study order, seed), one JSON object per line."""
    rank = {a: i for i, a in enumerate(order)}
    keys = sorted(rows, key=lambda k: (rank.get(k[0], len(rank)), k[0], k[1]))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(rows[k], sort_keys=True) + "\n" for k in keys))
    tmp.replace(path)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3, help="seeds per arm (0..N-1)")
    ap.add_argument("--scale", default="full", help="study sizes: a key of the config's SCALES")
    ap.add_argument("--config", default=str(DEFAULT_CONFIG))
    ap.add_argument("--workdir", default="", help="default runs/ablation[_<scale>][_<world>]")
    ap.add_argument("--results", default="",
                    help="default experiments/results/ablation[_<scale>][_<world>].jsonl")
    ap.add_argument("--arms", default="", help="comma-separated subset of the arms")
    ap.add_argument("--dry_run", action="store_true", help="print the plan and exit")
    ap.add_argument("--world", default="",
                    help="map world of every run (default: the study config's)")
    args = ap.parse_args(argv)
    if args.seeds < 1:
        ap.error("--seeds must be >= 1")
    config_path = Path(args.config).resolve()
    study = load_study(config_path)
    arms = list(study.ARMS)
    if args.arms:
        wanted = [a.strip() for a in args.arms.split(",") if a.strip()]
        unknown = [a for a in wanted if a not in arms]
        if unknown:
            ap.error(f"unknown arms {unknown}; the study has {arms}")
        arms = wanted
    scales = getattr(study, "SCALES", {"full": {}})
    if args.scale not in scales:
        ap.error(f"unknown --scale {args.scale!r}; the study has {list(scales)}")
    suffix = "" if args.scale == "full" else f"_{args.scale}"
    for arm in [WARM_START, *arms]:  # every config must load before any compute
        config = study.get_config(arm if args.scale == "full" else f"{arm}@{args.scale}")
    study_world = str(config.data.mapworld_world)
    world = args.world or study_world
    if world != study_world:
        get_world(world)  # an unknown world fails here, naming the presets
    extra = "" if world == study_world else world
    workdir = Path(args.workdir or f"runs/ablation{suffix}" + (f"_{extra}" if extra else ""))
    workdir = workdir.resolve()
    out_path = Path(args.results) if args.results else results_path(args.scale, extra)
    results = read_results(out_path)
    check_worlds(results, world, out_path)
    order = [WARM_START, *study.ARMS]
    jobs = [(WARM_START, s) for s in range(args.seeds)]
    jobs += [(a, s) for s in range(args.seeds) for a in arms]

    def done(job: tuple[str, int]) -> bool:
        # A collected row is a finished run, even from another checkout (the committed
        # results file): the study can run in pieces. A warm start is needed again only while
        # an arm of its seed still has to start from it and its checkpoint is not here.
        if job not in results:
            return False
        arm, seed = job
        if arm != WARM_START or is_finished(run_dir(workdir, arm, seed)):
            return True
        return all((a, seed) in results for a in arms)

    todo = [j for j in jobs if not done(j)]
    print(f"study {config_path.name}: {len(arms)} arms x {args.seeds} seeds + "
          f"{args.seeds} warm starts = {len(jobs)} runs; {len(jobs) - len(todo)} done, "
          f"{len(todo)} to run (workdir {workdir})")
    for arm in arms:
        print(f"  {arm:12s} {study.ARMS[arm]['about']}")
    if args.dry_run:
        for job in todo:
            init = run_dir(workdir, WARM_START, job[1]) if job[0] != WARM_START else None
            print(" ", " ".join(command(config_path, *job, run_dir(workdir, *job), init,
                                        args.scale, extra)))
        return 0
    from tqdm import tqdm

    # SIGTERM stops the current run cleanly too (it checkpoints; the next call resumes it).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    commit = git_commit()
    shown: dict[str, str] = {}
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), unit="run", dynamic_ncols=True)
    for arm, seed in todo:
        path = run_dir(workdir, arm, seed)
        init = run_dir(workdir, WARM_START, seed) if arm != WARM_START else None
        bar.set_description(f"{arm} seed {seed}")
        timing = {}
        if not is_finished(path):
            def progress(step: int | None, _arm: str = arm, _seed: int = seed) -> None:
                text = f"{_arm} seed {_seed} step {step if step is not None else '-'}"
                if shown.get("text") != text:  # redraw only when the step moves
                    shown["text"] = text
                    bar.set_description(text)

            timing = train(command(config_path, arm, seed, path, init, args.scale, extra),
                           path, progress)
        row = collect.summarize_run(path)
        row.update(arm=arm, seed=seed, commit=commit, scale=args.scale, **timing)
        results[(arm, seed)] = row
        write_results(out_path, results, order)
        bar.update(1)
        bar.write(f"{arm} seed {seed}: " + tables.one_line(row))
    bar.close()
    print(tables.summary_text(list(results.values()), order))
    return 0


if __name__ == "__main__":
    sys.exit(main())
