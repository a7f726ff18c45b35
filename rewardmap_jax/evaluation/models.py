"""Which model is evaluated, and with which settings: a run's checkpoint, a local Hugging Face
directory, or a Hugging Face repo id (through `huggingface_hub`'s cache).

    config, info = eval_config(workdir="runs/7b")             # the run's own config
    config, info = eval_config(hf_dir="Qwen/Qwen2.5-VL-7B-Instruct", overrides=["eval.x=8"])
    model, step = load_policy(config, workdir="runs/7b", step=None)

A run is evaluated with its saved config (`WORKDIR/config.json`, merged over the current
defaults of its preset: keys the code no longer has are refused, keys added since are
filled in). A Hugging Face model is evaluated with the real presets' settings and its own
processing limits: `min_pixels` / `max_pixels` from its `preprocessor_config.json`, prompt
buckets up to its `max_position_embeddings` minus `eval.max_new_tokens` (2,048, as the
official ReasonMap evaluation), patch buckets up to `eval.batch_size` maps at `max_pixels`.
`overrides` ("section.key=value") change any key, before anything is loaded.
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections as mlc

from rewardmap_jax import config_utils
from rewardmap_jax.evaluation.data import resolve

log = logging.getLogger(__name__)

HF_BASE_PRESET = "qwen2_5_vl_3b"  # the real presets' data and eval settings
PROMPT_BUCKETS = (128, 256, 512, 1024, 2048, 4096, 8192, 12288, 16384, 20480, 24576, 32768,
                  49152, 65536, 98304, 131072)
MIN_PATCH_BUCKET = 256


def apply_overrides(config: mlc.ConfigDict, overrides: Sequence[str]) -> None:
    """Applies "section.key=value" strings (values parsed as Python literals, else strings);
    an unknown key or a value of the wrong type raises `ConfigError` naming it."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or "." not in key:
            raise config_utils.ConfigError(f"override {item!r}: expected section.key=value")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        *path, name = key.split(".")
        node = config
        try:
            for p in path:
                node = node[p]
            if name not in node:
                raise KeyError(name)
            node[name] = value
        except (KeyError, AttributeError, TypeError) as e:
            raise config_utils.ConfigError(
                f"override {item!r}: {type(e).__name__}: {e} (unknown key or wrong type)") from e


def _geometric_patch_buckets(total: int) -> tuple[int, ...]:
    out, b = [], MIN_PATCH_BUCKET
    while b < total:
        out.append(b)
        b *= 2
    return (*out, b)


def hf_config(hf_dir: Path, overrides: Sequence[str] = ()) -> mlc.ConfigDict:
    """Evaluation config for a Hugging Face directory (module docstring)."""
    from rewardmap_jax.data.tokenizer import preprocessor_pixel_limits
    from rewardmap_jax.model import hf_io

    config = config_utils.get_config(preset=HF_BASE_PRESET)
    config.model.hf_dir = str(hf_dir)
    config.data.tokenizer = str(hf_dir)
    apply_overrides(config, overrides)  # e.g. eval.max_new_tokens, data.max_pixels first
    mcfg = hf_io.load_hf_config(str(hf_dir))
    limits = preprocessor_pixel_limits(hf_dir)
    if limits and not any(o.startswith(("data.min_pixels=", "data.max_pixels=")) for o in
                          overrides):
        config.data.min_pixels = limits["min_pixels"]
        config.data.max_pixels = limits["max_pixels"]
    limit = int(mcfg.text.max_position_embeddings) - int(config.eval.max_new_tokens)
    buckets = tuple(b for b in PROMPT_BUCKETS if b <= limit) or (limit,)
    per_image = int(config.data.max_pixels) // mcfg.vision.patch_size**2
    if not any(o.startswith("data.prompt_buckets=") for o in overrides):
        config.data.prompt_buckets = buckets
    if not any(o.startswith("data.patch_buckets=") for o in overrides):
        config.data.patch_buckets = _geometric_patch_buckets(int(config.eval.batch_size) *
                                                             per_image)
    return config


def run_config(workdir: str | Path, overrides: Sequence[str] = ()) -> mlc.ConfigDict:
    """A run's saved config over the current defaults of its preset (unknown keys refused)."""
    saved = config_utils.load_config(workdir)
    config = config_utils.get_config(preset=saved.get("preset") or None)
    errors = config_utils.unknown_key_errors(saved.to_dict(), config)
    if errors:
        raise config_utils.ConfigError(f"{Path(workdir) / config_utils.CONFIG_JSON}: " +
                                       "; ".join(errors))
    config.update_from_flattened_dict(config_utils.flatten(saved.to_dict()))
    apply_overrides(config, overrides)
    return config


def eval_config(*, workdir: str | None = None, hf_dir: str | None = None,
                overrides: Sequence[str] = ()) -> tuple[mlc.ConfigDict, dict[str, Any]]:
    """(config, description of the model) for a run, a Hugging Face model or neither (the
    default config: scoring given completions)."""
    if workdir:
        config, info = run_config(workdir, overrides), {"workdir": str(workdir)}
    elif hf_dir:
        path = resolve(hf_dir, "model")
        config = hf_config(path, overrides)
        info = {"hf": str(hf_dir)} | ({} if str(path) == str(hf_dir) else {"path": str(path)})
    else:
        config, info = config_utils.get_config(), {}
        apply_overrides(config, overrides)
    config_utils.validate_config(config)
    return config, info


def load_policy(config: mlc.ConfigDict, *, workdir: str | None = None,
                step: int | None = None) -> tuple[Any, int | None]:
    """(model, checkpoint step): the run's checkpoint `step` (default latest) with `workdir`,
    else the weights of `config.model.hf_dir`; sharded over `config.mesh`."""
    from flax import nnx

    from rewardmap_jax.model import sharding
    from rewardmap_jax.model.build import build_model
    from rewardmap_jax.run import checkpoint as ck

    model = build_model(config, sharding.make_mesh(config.mesh))
    if not workdir:
        return model, None
    graphdef, params = nnx.split(model, nnx.Param)
    params, got_step = ck.load_params(workdir, params, step)
    log.info("evaluating checkpoint step %d of %s", got_step, workdir)
    return nnx.merge(graphdef, params), got_step
