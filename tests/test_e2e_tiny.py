"""End-to-end smoke of the CLI on the tiny preset (a few steps), and the export round trip:
the trained checkpoint, exported to a Hugging Face directory, loads in transformers and answers
20 held-out questions exactly as the JAX model does (greedy)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from tests import browser

REPO = Path(__file__).resolve().parents[1]
OVERRIDES = [
    "--config.sft.steps=3", "--config.sft.batch_size=8", "--config.sft.warmup_steps=1",
    "--config.train.rl_steps=2", "--config.data.mapworld_questions_per_task=64",
    "--config.eval.questions_per_task=8", "--config.eval.batch_size=16",
    "--config.log.gallery_every_steps=1", "--config.log.gallery_questions=2",
    "--config.log.progress_bar=False", "--config.checkpoint.async_save=False",
]
N_QUESTIONS = 20


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("e2e") / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-m", "rewardmap_jax.main", "--config", "configs/curriculum.py",
         "--workdir", str(workdir), *OVERRIDES],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    return workdir


@pytest.mark.slow
def test_cli_writes_every_artefact(run_dir):
    from rewardmap_jax.run.metrics_writer import read_metrics

    assert (run_dir / "config.json").exists()
    assert (run_dir / "checkpoints" / "5").is_dir()  # 3 SFT + 2 GRPO steps
    rows = read_metrics(run_dir)
    assert {r["step"] for r in rows} >= set(range(1, 6))
    rl = [r for r in rows if r.get("phase") == "rl"]
    for key in ("reward/mean", "reward/overall", "accuracy/mean", "kl", "entropy", "clipfrac",
                "response_length", "grad_norm", "logp_diff_mean", "stage", "time/sample",
                "time/reward", "time/update", "tokens_per_s", "compiles"):
        assert key in rl[-1], key
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / "plots" / "curves.png").stat().st_size > 1000
    assert (run_dir / "gallery" / "index.html").exists()
    assert (run_dir / "gallery" / "step_4.html").exists()
    assert (run_dir / "gallery" / "eval_final.html").exists()
    report = (run_dir / "eval" / "summary.md").read_text()
    assert "| warm_start | 3 |" in report and "| final | 5 |" in report
    assert "# final vs warm_start (paired" in report and "| accuracy/Counting3 | 8 |" in report
    import json

    reps = json.loads((run_dir / "eval" / "summary.json").read_text())
    assert [r["tag"] for r in reps] == ["warm_start", "final"]
    assert reps[-1]["summary"]["accuracy/Counting3"]["n"] == 8
    warm = json.loads((run_dir / "eval" / "warm_start.json").read_text())
    assert sum(s["type"] == "Counting3" for s in warm["samples"]) == 8
    assert "ReasonMap-Plus (VQA)" in (run_dir / "eval" / "final.md").read_text()
    summary = json.loads((run_dir / "train_summary.json").read_text())
    # Fixed shapes: one compilation of each update step per prompt-length bucket in use (96
    # and 128: Counting1's options and plans' questions are longer; one answer bucket).
    assert summary["trace_counts"]["grpo_step"] <= 2 and summary["trace_counts"]["sft_step"] <= 2


@pytest.mark.slow
@pytest.mark.skipif(browser.CHROMIUM is None,
                    reason="chromium not installed (apt-get install chromium)")
def test_gallery_pages_in_a_browser(run_dir, tmp_path):
    """The run's own pages: a training page (GRPO step 4, 2 questions) and the final held-out
    page (one question per task type) draw every map and show no warning."""
    for page, n in (("step_4.html", 2), ("eval_final.html", 6)):
        info = browser.inspect_page(run_dir / "gallery" / page, tmp_path / page)
        browser.assert_maps_drawn(info, n)
        assert info["flags"] in ([], ["all rewards equal: zero advantage"] * len(info["flags"]))
        assert not any("non-finite" in f for f in info["flags"])


@pytest.mark.slow
def test_export_matches_transformers_greedy(run_dir, tmp_path):
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from rewardmap_jax import config_utils
    from rewardmap_jax.data.fast_tokenizer import FastTokenizer
    from rewardmap_jax.evaluation import data, generate
    from rewardmap_jax.export import restore_model
    from rewardmap_jax.rl import rollout as ro
    from rewardmap_jax.rl import sampler

    hf_dir = tmp_path / "hf"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-m", "rewardmap_jax.export", "--workdir",
                          str(run_dir), "--out", str(hf_dir)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    step, model, config = restore_model(run_dir)
    assert step == 5
    config = config_utils.load_config(run_dir)
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_dir).eval()
    records = data.mapworld_data("tiny", "val", 4, tuple(config.eval.tasks)).records[:N_QUESTIONS]
    batch, prompts, kept, bad = generate.Batcher(config, "tiny", model.cfg, N_QUESTIONS)(records)
    assert len(kept) == N_QUESTIONS and not bad
    t = 24
    sp = sampler.params_from_config(config.rl, model.cfg, num_generations=1, temperature=0.0,
                                    max_new_tokens=t)
    jax_tokens = np.asarray(ro.sample(model, prompts, sp, jax.random.key(0)).tokens)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    rows = np.concatenate([ro._example_rows(batch, i) for i in range(len(ids))])
    with torch.no_grad():
        gen = hf.generate(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            pixel_values=torch.tensor(rows), image_grid_thw=torch.tensor(batch["image_grid_thw"]),
            mm_token_type_ids=torch.tensor((ids == model.cfg.image_token_id).astype(np.int64)),
            do_sample=False, max_new_tokens=t, eos_token_id=list(sp.stop_ids),
            pad_token_id=sp.pad_id, bad_words_ids=[[i] for i in sp.forbidden_ids])
    hf_tokens = gen[:, ids.shape[1]:].numpy()
    hf_tokens = np.pad(hf_tokens, ((0, 0), (0, t - hf_tokens.shape[1])),
                       constant_values=sp.pad_id)
    np.testing.assert_array_equal(jax_tokens, hf_tokens)
    tok = FastTokenizer("tiny")
    texts = [tok.decode(r[r != sp.pad_id].tolist()) for r in jax_tokens]
    assert len(texts) == N_QUESTIONS
