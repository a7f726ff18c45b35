"""Run config -> model config -> sharded model: the one place every entry point builds the policy.

The trainer, evaluation, export and the benchmarks call these two functions, so a run's
`model.*` settings mean the same thing everywhere, whatever the weights' source:

    cfg = model_config(config)           # ModelConfig: architecture + execution policy
    model = build_model(config, mesh)    # HF weights streamed into their shardings, or random init

`config` is a run config (an `ml_collections.ConfigDict` from `configs/curriculum.py`, or any
mapping with the same sections); only its `model`, `mesh`, `seed` and `data.max_pixels` keys are
read. Architecture comes from `model.hf_dir`'s `config.json` when set, else from the
`model.preset`; the execution policy always from `model.*`:

| key | ModelConfig field | meaning |
| --- | --- | --- |
| model.param_dtype, model.compute_dtype | param_dtype, compute_dtype | storage / matmul dtype |
| model.remat | remat | none / full / dots per vision block and decoder layer |
| model.attn_impl, model.attn_chunk | attn_impl, attn_chunk | attention kernel, query chunk |
| model.vision_frame_span | vision_frame_span | -1: from data.max_pixels; 0: all keys; > 0: as set |

The automatic frame span (-1) is `vision_layout.max_frame_slots(data.max_pixels)`: the most
buffer slots one resized image can span, so a packed batch of maps of any sizes never exceeds
it.
"""

from __future__ import annotations

import logging
from typing import Any

from flax import nnx
from jax.sharding import Mesh

from rewardmap_jax.model import hf_io, sharding
from rewardmap_jax.model.config import ModelConfig, get_preset
from rewardmap_jax.model.qwen2_5_vl import Qwen2_5_VL, abstract_model
from rewardmap_jax.model.vision_layout import max_frame_slots

log = logging.getLogger(__name__)

AUTO_SPAN = -1  # model.vision_frame_span: derive the bound from data.max_pixels


def policy(config: Any) -> dict[str, Any]:
    """The execution-policy fields of `ModelConfig` from the run config's `model` section
    (everything but the vision frame span, which also needs the architecture)."""
    m = config["model"]
    return dict(param_dtype=str(m["param_dtype"]), compute_dtype=str(m["compute_dtype"]),
                remat=str(m["remat"]), attn_impl=str(m.get("attn_impl", "xla")),
                attn_chunk=int(m.get("attn_chunk", 512)))


def frame_span(config: Any, cfg: ModelConfig) -> int:
    """`model.vision_frame_span` resolved: -1 (the default) derives the bound from
    `data.max_pixels`, the most slots one resized image can span (`max_frame_slots`), so a
    batch of maps of any sizes never exceeds it; 0 or a positive value is taken as given."""
    span = int(config["model"].get("vision_frame_span", AUTO_SPAN))
    if span != AUTO_SPAN:
        return span
    data = config.get("data", None)
    max_pixels = data.get("max_pixels", None) if data is not None else None
    if max_pixels is None:
        raise ValueError("model.vision_frame_span=-1 (automatic) needs data.max_pixels; set "
                         "model.vision_frame_span explicitly (0 = every key)")
    return max_frame_slots(int(max_pixels), cfg.vision)


def model_config(config: Any) -> ModelConfig:
    """The `ModelConfig` a run trains: architecture from `model.hf_dir`'s config.json (else
    `model.preset`), execution policy from `model.*` (module docstring)."""
    m = config["model"]
    hf_dir = m.get("hf_dir", "")
    if hf_dir:
        cfg = hf_io.load_hf_config(str(hf_dir), **policy(config))
    else:
        cfg = get_preset(str(m["preset"]), **policy(config))
    return cfg.replace(vision_frame_span=frame_span(config, cfg))


def param_shardings(config: Any, cfg: ModelConfig, mesh: Mesh) -> Any:
    """NamedSharding per parameter of the model `cfg` describes (an `nnx.State` of the model's
    structure), from `mesh.rules` / `mesh.path_rules`."""
    rules = sharding.rules_from_config(config["mesh"])
    path_rules = tuple(config["mesh"].get("path_rules", ()))
    _, state = nnx.split(abstract_model(cfg))
    return sharding.state_shardings(state, mesh, rules, path_rules)


def build_model(config: Any, mesh: Mesh, cfg: ModelConfig | None = None) -> Qwen2_5_VL:
    """The policy on `mesh`, every parameter created in its sharding.

    With `model.hf_dir`, each safetensors tensor is read slice by slice straight into its
    shards (`hf_io.load_hf(..., shardings=...)`: no whole-model copy on one device or host);
    otherwise a random init (seed `config.seed`) compiled to produce the shards directly.
    `cfg` defaults to `model_config(config)`.
    """
    cfg = model_config(config) if cfg is None else cfg
    hf_dir = config["model"].get("hf_dir", "")
    if hf_dir:
        log.info("loading %s into %s (param %s, compute %s, remat %s)", hf_dir,
                 dict(mesh.shape), cfg.param_dtype, cfg.compute_dtype, cfg.remat)
        return hf_io.load_hf(str(hf_dir), cfg, shardings=param_shardings(config, cfg, mesh))
    rules = sharding.rules_from_config(config["mesh"])
    path_rules = tuple(config["mesh"].get("path_rules", ()))
    seed = int(config.get("seed", 0))
    return sharding.create_sharded_model(
        lambda: Qwen2_5_VL(cfg, nnx.Rngs(params=seed)), mesh, rules, path_rules)
