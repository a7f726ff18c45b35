"""Everything a run needs besides weights, built and checked before a weight is loaded.

    inputs = prepare_inputs(config, workdir, place)   # ConfigError listing every problem
    model = build_model(config, mesh)          # only then: minutes and tens of GB for a 7B

A run that would fail on its config, its paths, its reward, its tokenizer or its data fails
here, in seconds, with every problem named by its config key, instead of after loading (and
sharding) the weights. What is checked:

    config        check_config: keys that would fail inside a compiled step or the optimizer
    model config  model.build.model_config (reads model.hf_dir/config.json, no weights)
    tokenizer     loaded (data.tokenizer / model.hf_dir / tiny); its image, video and vision
                  start/end tokens must have the model config's ids, its eos one of the
                  model's stop tokens, every special id inside the embedding table
    reward        reward.fn built (reward.mode and the other keys validated)
    data          both pipelines built: real dataset files read and their rows validated,
                  map-world sources generated
    held-out      data.source="reasonmap" with evaluation on: the eval.split files read
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import ml_collections as mlc

from rewardmap_jax import evaluation
from rewardmap_jax.config_utils import ConfigError
from rewardmap_jax.data.curriculum import Schedule, Stage, schedule_from_config
from rewardmap_jax.data.fast_tokenizer import FastTokenizer
from rewardmap_jax.data.pipeline import DataPipeline
from rewardmap_jax.data.sources import mapworld_sources
from rewardmap_jax.data.tokenizer import special_token_ids, tokenizer_source
from rewardmap_jax.mapworld.generator import get_world
from rewardmap_jax.model.build import model_config
from rewardmap_jax.model.config import ModelConfig
from rewardmap_jax.rewards.registry import RewardFn, make_reward_fn
from rewardmap_jax.rl import steps
from rewardmap_jax.rl.placement import Placement


@dataclasses.dataclass
class RunInputs:
    model_cfg: ModelConfig
    tokenizer: FastTokenizer
    reward_fn: RewardFn
    sft_data: DataPipeline | None  # None when sft.steps == 0
    rl_data: DataPipeline
    evaluator: evaluation.TrainingEvaluator


def world(config: mlc.ConfigDict):
    """The run's map world (stations marked when `train.highlight_stations`)."""
    return get_world(config.data.mapworld_world,
                     highlight=bool(config.train.highlight_stations))


def _sources(config: mlc.ConfigDict, split: str, size: int, tasks) -> dict[str, Any] | None:
    if config.data.source != "mapworld":
        return None  # the pipeline reads the real datasets itself
    return mapworld_sources(world(config), split, size, tasks)


def sft_pipeline(config: mlc.ConfigDict, place: Placement | None = None) -> DataPipeline:
    weights = dict(config.sft.tasks)
    schedule = Schedule((Stage("sft", weights, int(config.sft.steps)),))
    b = int(config.sft.batch_size)
    kw = dict(schedule=schedule, batch_size=b, with_targets=True, repeat=False)
    if place is not None:
        kw["rows"] = place.rows(b)
    src = _sources(config, "train", int(config.data.mapworld_questions_per_task), tuple(weights))
    if src is not None:
        kw["sources"] = src
    return DataPipeline.from_config(config, **kw)


def rl_pipeline(config: mlc.ConfigDict, place: Placement | None = None) -> DataPipeline:
    schedule = schedule_from_config(config.curriculum)
    kw: dict[str, Any] = dict(schedule=schedule)
    if place is not None:
        kw["rows"] = place.rows(int(config.data.batch_size))
    src = _sources(config, "train", int(config.data.mapworld_questions_per_task),
                   schedule.task_types)
    if src is not None:
        kw["sources"] = src
    return DataPipeline.from_config(config, **kw)


def check_config(config: mlc.ConfigDict) -> None:
    """Consistency of keys that would otherwise fail deep inside a compiled step or the
    optimizer; raises `ConfigError` naming the keys."""
    c = config
    errors = steps.config_errors(c) + evaluation.config_errors(
        c, model_config(c).vision.patch_size)
    if c.data.get("shard", "jax_process") != "jax_process" and jax.process_count() > 1:
        errors.append(f"data.shard={c.data.shard!r}: in a multi-process run each process reads "
                      "the rows its devices hold (data.shard='jax_process')")
    if c.rl.dynamic_sampling and jax.process_count() > 1:
        errors.append("rl.dynamic_sampling runs in one process only: its refill moves prompt "
                      "groups between the hosts that read them (set rl.dynamic_sampling=False "
                      "for multi-process runs)")
    if errors:
        raise ConfigError("; ".join(errors))


def tokenizer_errors(tokenizer: Any, cfg: ModelConfig, where: str) -> list[str]:
    """Disagreements between a tokenizer and the model config that would train silently
    wrong: image placeholders the vision path never fills, a stop token the sampler never
    sees, ids past the embedding table."""
    ids = special_token_ids(tokenizer)
    want = {"image_pad": cfg.image_token_id, "video_pad": cfg.video_token_id,
            "vision_start": cfg.vision_start_token_id, "vision_end": cfg.vision_end_token_id}
    errors = [f"tokenizer {where}: {name} is id {getattr(ids, name)}, the model config says "
              f"{model_id}" for name, model_id in want.items() if getattr(ids, name) != model_id]
    if cfg.eos_token_id not in (ids.im_end, ids.endoftext):
        errors.append(f"tokenizer {where}: the model's eos id {cfg.eos_token_id} is neither "
                      f"<|im_end|> ({ids.im_end}) nor <|endoftext|> ({ids.endoftext})")
    top, vocab = max(dataclasses.astuple(ids)), cfg.text.vocab_size
    if top >= vocab:
        errors.append(f"tokenizer {where}: token id {top} is outside the model's vocabulary "
                      f"({vocab})")
    return errors


def prepare_inputs(config: mlc.ConfigDict, workdir: str | Path,
                   place: Placement | None = None) -> RunInputs:
    """Builds and checks everything but the weights (module docstring); raises one
    `ConfigError` listing every problem found."""
    check_config(config)
    errors: list[str] = []

    def attempt(what: str, fn, *args):
        try:
            return fn(*args)
        except ConfigError as e:
            errors.append(str(e))
        except (ValueError, KeyError, OSError, TypeError) as e:
            errors.append(f"{what}: {type(e).__name__}: {e}")
        return None

    cfg = attempt("model config", model_config, config)
    src = tokenizer_source(config)
    tok = attempt(f"tokenizer {src!r} (data.tokenizer / model.hf_dir)", FastTokenizer, src)
    if tok is not None and cfg is not None:
        errors += attempt("tokenizer", tokenizer_errors, tok, cfg, repr(src)) or []
    reward_fn = attempt("reward (reward.*)", make_reward_fn, config.reward)
    sft_data = None
    if int(config.sft.steps):
        sft_data = attempt("warm-start data (sft.*, data.*)", sft_pipeline, config, place)
    rl_data = attempt("GRPO data (curriculum.*, data.*)", rl_pipeline, config, place)
    ev = config.eval
    evaluator = evaluation.TrainingEvaluator(config, workdir)
    if config.data.source != "mapworld" and (ev.at_sft_end or ev.final or int(ev.every_steps)):
        # Read now (the records, not the images) and kept: the first evaluation reuses them.
        attempt("held-out data (eval.*, data.*)", evaluator.data, int(ev.questions_per_task))
    if errors:
        raise ConfigError("this run cannot start (nothing was loaded):\n  "
                          + "\n  ".join(errors))
    return RunInputs(cfg, tok, reward_fn, sft_data, rl_data, evaluator)
