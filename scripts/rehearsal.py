r"""Rehearsal of the real-preset code path on CPU: `qwen2_5_vl_3b` end to end, no accelerator.

    python scripts/rehearsal.py            # reduced form (CI: tests/test_rehearsal.py)
    python scripts/rehearsal.py --full     # 3B widths, real vocabulary, 2 layers (docs/scaling.md)

Builds in `--workdir` what a user brings to a real run, then runs the user's commands on 8 fake
CPU devices (FSDP 8, the preset's mesh), each phase in its own process, timed, with its peak RSS:

1. prepare: a random Hugging Face checkpoint (`model.hf_dir`: config.json, several bf16
   safetensors shards, preprocessor_config.json, and a tokenizer with Qwen2.5-VL's vocabulary
   layout: the Qwen special tokens at their hub ids 151643-151656, 151,657 entries,
   `tokenizer_build.build_qwen_id_tokenizer`), 2 decoder layers and 2 vision blocks (the
   last one full attention); copies of the real-format fixtures (ReasonMap-Train with maps/
   and stations/, ReasonMap-Plus, ReasonMap validation with PNG bytes in the parquet) whose maps
   are resized to several sizes of realistic pixel counts;
2. train: `python -m rewardmap_jax.main --config configs/curriculum.py:qwen2_5_vl_3b` with
   model.hf_dir, the data dirs and small sizes overridden (`OVERRIDES`; everything else is the
   preset's: bf16 compute, fp32 master weights, full remat, grad_accum 2, async checkpoints,
   evaluation on the held-out real data): 2 GRPO steps, the final held-out evaluation,
   a checkpoint at step 2;
3. resume: the same command with `train.rl_steps=3`: restores step 2 and trains step 3;
4. uninterrupted (`--uninterrupted`, on in the reduced form): 3 steps in a fresh workdir; its
   step-3 metrics must equal the resumed run's;
5. export: `python -m rewardmap_jax.export --workdir RUN --out EXPORT`;
6. reload: `transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(EXPORT)` and its
   tokenizer / image processor; logits of a prompt compared with the JAX model loaded from the
   export.

The reduced form runs the same code path (same preset, special-token ids, vocabulary size,
vision patch/window/merge geometry, data formats, 8 devices, every phase) at the tiny widths
and smaller maps. Writes `WORKDIR/rehearsal.json` (per phase: seconds, peak RSS, load average;
checks) and exits non-zero when a phase fails or a check does not hold.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:  # runnable from a checkout without `pip install -e .`
    sys.path.insert(0, str(_REPO))

FIXTURES = _REPO / "tests" / "fixtures"
MiB = 2**20
DEVICES = 8
TRAIN_COPIES = 12
# Map sizes (width, height), cycled over each dataset's maps: several patch grids, prompt
# buckets and per-image vision buffers in one batch. The full form: 0.6-1.6 MP (real ReasonMap
# maps are resized to <= 12.8 MP, data.max_pixels); the reduced form: 0.2-0.56 MP, every
# prompt in the 1,024-token bucket (fewer compilations).
MAP_SIZES = {
    "full": ((896, 672), (1232, 868), (700, 1120), (1400, 1148)),
    "reduced": ((448, 448), (672, 448), (560, 840), (868, 644)),
}
# Overrides of the qwen2_5_vl_3b preset besides the paths: short completions and a small
# evaluation. The batch is the preset's (16 prompts x G 4, rl.grad_accum 2: one prompt per
# device per micro-step on 8 devices, the layout of the paper's 8 GPUs).
OVERRIDES = {
    "rl.max_new_tokens": 8,
    "eval.max_new_tokens": 8,
    "eval.questions_per_task": 1,
    "eval.batch_size": 8,
    "log.progress_bar": False,
}
# Step-3 metrics the resumed and uninterrupted runs must share.
PHASES = ("prepare", "train", "resume", "uninterrupted", "export", "reload")
COMPARED = ("loss", "grad_norm", "reward/mean", "kl", "response_length")


def _reduced_model_config():
    """The tiny preset's widths at the 3B's vocabulary, token ids and vision geometry."""
    from rewardmap_jax.model.config import get_preset

    real, tiny = get_preset("qwen2_5_vl_3b"), get_preset("tiny")
    vision = dataclasses.replace(real.vision, depth=2, fullatt_block_indexes=(1,),
                                 hidden_size=tiny.vision.hidden_size,
                                 intermediate_size=tiny.vision.intermediate_size,
                                 num_heads=tiny.vision.num_heads,
                                 out_hidden_size=tiny.text.hidden_size)
    text = dataclasses.replace(tiny.text, vocab_size=real.text.vocab_size,
                               max_position_embeddings=real.text.max_position_embeddings)
    return real.replace(vision=vision, text=text)


# ----------------------------------------------------------------------------------------------
# Phase 1: checkpoint, tokenizer, data
# ----------------------------------------------------------------------------------------------


def _resize_png(data: bytes, size: tuple[int, int]) -> bytes:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        out = io.BytesIO()
        img.convert("RGB").resize(size, Image.BICUBIC).save(out, format="PNG")
    return out.getvalue()


def make_data(out: Path, sizes) -> dict[str, list[list[int]]]:
    """Copies of the real-format fixtures with every map resized (sizes cycled)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    used: dict[str, list[list[int]]] = {}
    for name in ("reasonmap_train", "reasonmap_plus"):
        shutil.copytree(FIXTURES / name, out / name)
        maps = sorted((out / name / "maps").rglob("*.png"))
        for i, f in enumerate(maps):
            f.write_bytes(_resize_png(f.read_bytes(), sizes[i % len(sizes)]))
        used[name] = [list(sizes[i % len(sizes)]) for i in range(len(maps))]
    # ReasonMap-Train rows repeated: the curriculum's first stage (TorF, 4 fixture rows) then
    # holds 3 global batches of the preset's 16 prompts.
    train = out / "reasonmap_train" / "train.parquet"
    pq.write_table(pa.concat_tables([pq.read_table(train)] * TRAIN_COPIES), train)
    # ReasonMap: base64 PNG strings in the parquet's `figure` column.
    src = FIXTURES / "reasonmap" / "reasonmap-validation.parquet"
    table = pq.read_table(src)
    figures = table.column("figure").to_pylist()
    new = [base64.b64encode(_resize_png(base64.b64decode(f), sizes[-1 - i % len(sizes)]))
           .decode() for i, f in enumerate(figures)]
    table = table.set_column(table.schema.get_field_index("figure"), "figure",
                             pa.array(new, pa.string()))
    (out / "reasonmap").mkdir(parents=True)
    pq.write_table(table, out / "reasonmap" / src.name)
    used["reasonmap"] = [list(sizes[-1 - i % len(sizes)]) for i in range(len(figures))]
    return used


def prepare(work: Path, full: bool) -> dict:
    from benchmarks.hf_load import shallow_config, write_checkpoint
    from configs.curriculum import get_config
    from rewardmap_jax.data.tokenizer_build import build_qwen_id_tokenizer
    from rewardmap_jax.export import preprocessor_config

    cfg = shallow_config(2, 2) if full else _reduced_model_config()
    hf = work / "hf"
    # Several shards whatever the size: ~1/4 of the bf16 checkpoint each.
    shard_mb = max(1, int(2 * sum(_param_sizes(cfg)) / MiB / 4))
    info = write_checkpoint(cfg, str(hf), shard_mb)
    build_qwen_id_tokenizer(hf)
    preset = get_config("qwen2_5_vl_3b")
    (hf / "preprocessor_config.json").write_text(
        json.dumps(preprocessor_config(preset, cfg), indent=2))
    info["maps"] = make_data(work / "data", MAP_SIZES["full" if full else "reduced"])
    info["vocab_size"] = cfg.text.vocab_size
    info["hidden_size"] = cfg.text.hidden_size
    return info


def _param_sizes(cfg) -> list[int]:
    import jax
    from flax import nnx

    from rewardmap_jax.model.qwen2_5_vl import abstract_model

    return [x.size for x in jax.tree.leaves(nnx.state(abstract_model(cfg), nnx.Param))]


# ----------------------------------------------------------------------------------------------
# Phase 6: transformers reload
# ----------------------------------------------------------------------------------------------


def reload(export: Path) -> dict:
    """transformers loads the export (model, tokenizer, image processor); its logits on a chat
    prompt match the JAX model loaded from the same directory (fp32 both)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    from rewardmap_jax.model import hf_io

    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(export, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(export)
    image_processor = AutoImageProcessor.from_pretrained(export)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "According to the subway map, how many lines are there?"}],
        tokenize=False, add_generation_prompt=True)
    ids = np.asarray(tok(text, add_special_tokens=False)["input_ids"], np.int64)[None]
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids)).logits.float().numpy()
    model = hf_io.load_hf(str(export), hf_io.load_hf_config(str(export)))
    n = ids.shape[1]
    positions = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (3, 1, n))
    ours, _ = model(jnp.asarray(ids, jnp.int32), positions, jnp.ones((1, n), bool))
    ours = np.asarray(jax.device_get(ours))
    diff = float(np.abs(ours - ref).max())
    return {"hf_params": int(sum(p.numel() for p in hf.parameters())),
            "vocab_size": int(hf.config.text_config.vocab_size),
            "image_token_id": int(hf.config.image_token_id),
            "tokenizer_image_pad": int(tok.convert_tokens_to_ids("<|image_pad|>")),
            "tokenizer_im_end": int(tok.convert_tokens_to_ids("<|im_end|>")),
            "max_pixels": int(image_processor.size["longest_edge"]),
            "prompt_tokens": n, "logits_max_abs_diff": diff,
            "logits_scale": float(np.abs(ref).max()),
            "same_argmax": bool((ours.argmax(-1) == ref.argmax(-1)).all())}


# ----------------------------------------------------------------------------------------------
# Driver: one process per phase, timed, peak RSS from wait4
# ----------------------------------------------------------------------------------------------


def _env(work: Path) -> dict[str, str]:
    """8 fake CPU devices; one persistent compilation cache for every phase (the resumed and
    uninterrupted runs reuse the first run's executables, as a restarted job does)."""
    env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(DEVICES), JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=str(work / "jax_cache"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO), env.get("PYTHONPATH")]))
    return env


def _run(name: str, argv: list[str], log_dir: Path) -> dict:
    """Runs `argv`, its output to LOG_DIR/NAME.log; seconds, peak RSS (this process tree's
    largest: the child's own ru_maxrss, Grain workers excluded), load average."""
    load = os.getloadavg()[0]
    log = log_dir / f"{name}.log"
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                env=_env(log_dir.parent), cwd=_REPO)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status)
    row = {"phase": name, "seconds": round(seconds, 1),
           "peak_rss_MiB": round(usage.ru_maxrss / 1024), "rc": rc,
           "load_avg": round(max(load, os.getloadavg()[0]), 2), "log": str(log)}
    print(f"{name:>14}: {row['seconds']:7.1f} s  peak RSS {row['peak_rss_MiB']:6,} MiB  "
          f"load {row['load_avg']:.1f}  rc {rc}", flush=True)
    if rc:
        tail = log.read_text()[-4000:]
        raise SystemExit(f"phase {name} failed (rc {rc}); last output of {log}:\n{tail}")
    return row


def train_argv(work: Path, run: Path, rl_steps: int) -> list[str]:
    data = work / "data"
    flags = {"model.hf_dir": work / "hf", "data.reasonmap_train_dir": data / "reasonmap_train",
             "data.reasonmap_plus_dir": data / "reasonmap_plus",
             "data.reasonmap_dir": data / "reasonmap", **OVERRIDES, "train.rl_steps": rl_steps}
    return [sys.executable, "-m", "rewardmap_jax.main",
            "--config", "configs/curriculum.py:qwen2_5_vl_3b", "--workdir", str(run),
            *[f"--config.{k}={v}" for k, v in flags.items()]]


def _metrics(run: Path) -> dict[int, dict]:
    from rewardmap_jax.run.metrics_writer import read_metrics

    return {int(r["step"]): r for r in read_metrics(run) if "loss" in r}


def check(work: Path, summary: dict) -> list[str]:
    """What every phase must have left behind; returns the failures."""
    run, fails = work / "run", []
    train = json.loads((run / "train_summary.json").read_text())
    steps = _metrics(run)
    summary["train_summary"] = {k: train[k] for k in ("step", "total", "preempted", "compiles")}
    summary["step_metrics"] = {s: {k: m.get(k) for k in COMPARED} for s, m in steps.items()}
    if sorted(steps) != [1, 2, 3]:
        fails.append(f"GRPO steps logged: {sorted(steps)} (want 1, 2, 3)")
    if train["step"] != 3 or train["preempted"]:
        fails.append(f"resumed run ended at step {train['step']}, preempted {train['preempted']}")
    resumed = "resumed from step 2" in (work / "logs" / "resume.log").read_text()
    summary["resumed_from_step_2"] = resumed
    if not resumed:
        fails.append("the second invocation did not resume from step 2")
    ckpts = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    summary["checkpoints"] = ckpts
    if not {2, 3} <= set(ckpts):
        fails.append(f"checkpoints {ckpts} (want 2 and 3)")
    reports = {r["tag"]: r for r in train["reports"]}
    summary["eval"] = {t: {k: r.get(k) for k in ("step", "n", "data") if k in r}
                       for t, r in reports.items()}
    if "final" not in reports or reports["final"].get("step") != 3:
        fails.append(f"no final held-out evaluation at step 3: {list(reports)}")
    if (work / "run_uninterrupted").exists():
        other = _metrics(work / "run_uninterrupted")
        same = {k: (steps.get(3, {}).get(k), other.get(3, {}).get(k)) for k in COMPARED}
        summary["resumed_vs_uninterrupted_step3"] = same
        if any(a != b for a, b in same.values()):
            fails.append(f"resumed step 3 differs from the uninterrupted run: {same}")
    rl = summary["reload"]
    if rl["vocab_size"] != summary["prepare"]["vocab_size"]:
        fails.append(f"exported vocab {rl['vocab_size']}")
    if rl["tokenizer_image_pad"] != rl["image_token_id"] or rl["tokenizer_im_end"] != 151645:
        fails.append(f"exported tokenizer ids {rl}")
    if rl["logits_max_abs_diff"] > 1e-4 * max(1.0, rl["logits_scale"]) or not rl["same_argmax"]:
        fails.append(f"transformers vs JAX logits differ: {rl}")
    return fails


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--full", action="store_true",
                    help="3B widths and real vocabulary, 2 layers, 0.6-1.6 MP maps")
    ap.add_argument("--workdir", default="", help="kept; default a temporary directory")
    ap.add_argument("--uninterrupted", action=argparse.BooleanOptionalAction, default=None,
                    help="also train 3 steps without interruption and compare step 3 "
                         "(default: on in the reduced form, off with --full)")
    ap.add_argument("--start-at", choices=PHASES, default="prepare",
                    help="continue an existing --workdir from this phase (the earlier phases' "
                         "rows are read from WORKDIR/phases.jsonl)")
    ap.add_argument("--phase", choices=("prepare", "reload"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.phase:  # a child process of the driver
        work = Path(args.workdir)
        out = prepare(work, args.full) if args.phase == "prepare" else reload(work / "export")
        (work / f"{args.phase}.json").write_text(json.dumps(out, indent=1))
        return 0
    with tempfile.TemporaryDirectory(prefix="rehearsal-") as tmp:
        work = Path(args.workdir or tmp).absolute()
        return drive(work, args)


def drive(work: Path, args: argparse.Namespace) -> int:
    logs = work / "logs"
    if args.start_at == "prepare":
        if work.exists() and any(work.iterdir()):
            raise SystemExit(f"--workdir {work} is not empty")
        logs.mkdir(parents=True)
    form = "full" if args.full else "reduced"
    uninterrupted = (not args.full) if args.uninterrupted is None else args.uninterrupted
    print(f"rehearsal ({form} form) in {work}; load average {os.getloadavg()[0]:.1f}"
          + (" (loaded machine: times are not benchmark figures)"
             if os.getloadavg()[0] > 1.5 else ""), flush=True)
    me = [sys.executable, str(Path(__file__).resolve()), "--workdir", str(work)]
    full = ["--full"] if args.full else []
    commands = {
        "prepare": [*me, *full, "--phase", "prepare"],
        "train": train_argv(work, work / "run", 2),
        "resume": train_argv(work, work / "run", 3),
        "uninterrupted": train_argv(work, work / "run_uninterrupted", 3),
        "export": [sys.executable, "-m", "rewardmap_jax.export", "--workdir", str(work / "run"),
                   "--out", str(work / "export")],
        "reload": [*me, "--phase", "reload"],
    }
    done = work / "phases.jsonl"
    start = PHASES.index(args.start_at)
    rows = [r for r in map(json.loads, done.read_text().splitlines())
            if PHASES.index(r["phase"]) < start] if start else []
    for name in PHASES[start:]:
        if name == "uninterrupted" and not uninterrupted:
            continue
        rows.append(_run(name, commands[name], logs))
        with open(done, "a") as f:
            f.write(json.dumps(rows[-1]) + "\n")
    summary = {"form": form, "phases": rows,
               "total_seconds": round(sum(r["seconds"] for r in rows), 1),
               "overrides": OVERRIDES, "map_sizes": MAP_SIZES[form],
               "prepare": json.loads((work / "prepare.json").read_text()),
               "reload": json.loads((work / "reload.json").read_text())}
    summary["distinct_map_sizes"] = {k: len({tuple(x) for x in v})
                                      for k, v in summary["prepare"].pop("maps").items()}
    fails = check(work, summary)
    summary["failures"] = fails
    (work / "rehearsal.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: summary[k] for k in ("total_seconds", "prepare", "reload", "eval",
                                              "checkpoints")}))
    print(f"total {summary['total_seconds']} s; " + ("FAILED:\n  " + "\n  ".join(fails)
                                                      if fails else "every phase checked"))
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
