"""Run config -> model config -> model (`model/build.py`): the run's `model.*` policy is honoured
whatever the weights' source, and the automatic vision frame span."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.curriculum import get_config
from rewardmap_jax.data.image_processing import smart_resize
from rewardmap_jax.model import build, hf_io, sharding
from rewardmap_jax.model.config import get_preset
from rewardmap_jax.model.vision_layout import max_frame_slots, required_patches


def _run_config(hf_dir: str = ""):
    c = get_config("tiny")
    c.model.hf_dir = hf_dir
    c.model.compute_dtype = "bfloat16"
    c.model.remat = "full"
    c.model.attn_chunk = 128
    return c


def test_policy_is_honoured_with_hf_weights(hf_tied):
    """A saved HF directory built with compute bf16, remat full, chunk 128: those settings (not
    the directory's defaults), fp32 params in their FSDP shardings, the file's values, and bf16
    activations in a forward pass."""
    _, d = hf_tied
    c = _run_config(d)
    mesh = sharding.make_mesh(c.mesh)
    model = build.build_model(c, mesh)
    cfg = model.cfg
    assert (cfg.compute_dtype, cfg.remat, cfg.attn_chunk, cfg.param_dtype) == (
        "bfloat16", "full", 128, "float32")
    assert cfg.vision_frame_span == max_frame_slots(c.data.max_pixels, cfg.vision) > 0
    assert cfg.text == hf_io.load_hf_config(d).text  # architecture from config.json
    want = {k: np.asarray(v.get_value()) for k, v in
            nnx.to_flat_state(nnx.state(hf_io.load_hf(d), nnx.Param))}
    targets = dict(nnx.to_flat_state(build.param_shardings(c, cfg, mesh)))
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        x = var.get_value()
        assert x.dtype == jnp.float32 and x.sharding == targets[path].get_value(), path
        np.testing.assert_array_equal(np.asarray(x), want[path])
    assert sum(not v.get_value().sharding.is_fully_replicated
               for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param))) > 0
    ids = jnp.arange(12, dtype=jnp.int32).reshape(2, 6) + 2
    pos = jnp.broadcast_to(jnp.arange(6, dtype=jnp.int32), (3, 2, 6))
    hidden, _ = model(ids, pos, jnp.ones((2, 6), bool), return_hidden=True)
    assert hidden.dtype == jnp.bfloat16


def test_preset_and_hf_dir_get_the_same_policy(hf_tied):
    _, d = hf_tied
    from_preset = build.model_config(_run_config())
    from_dir = build.model_config(_run_config(d))
    fields = ("param_dtype", "compute_dtype", "remat", "attn_impl", "attn_chunk",
              "vision_frame_span")
    assert [getattr(from_preset, f) for f in fields] == [getattr(from_dir, f) for f in fields]
    assert from_preset == get_preset("tiny", **{f: getattr(from_preset, f) for f in fields})


def test_random_init_is_sharded_and_seeded():
    c = _run_config()
    mesh = sharding.make_mesh(c.mesh)
    a = build.build_model(c, mesh)
    c.seed = 1
    b = build.build_model(c, mesh)
    ka, kb = a.language_model.embed_tokens.get_value(), b.language_model.embed_tokens.get_value()
    assert not ka.sharding.is_fully_replicated
    assert not np.array_equal(np.asarray(ka), np.asarray(kb))


def test_frame_span_automatic_explicit_and_off():
    c = _run_config()
    vis = get_preset("qwen2_5_vl_3b").vision
    assert max_frame_slots(12845056, vis) == 87360  # docstring: H = 9, W = 1,820 tokens
    assert max_frame_slots(3584 * 3584, vis, max_aspect_ratio=1) == 65536  # square 3,584 px
    c.data.max_pixels = 1003520  # 1,280 tokens
    assert build.model_config(c).vision_frame_span == max_frame_slots(
        1003520, get_preset("tiny").vision)
    c.model.vision_frame_span = 0
    assert build.model_config(c).vision_frame_span == 0
    c.model.vision_frame_span = 64
    assert build.model_config(c).vision_frame_span == 64
    c.model.vision_frame_span = 60  # not a multiple of the tiny model's 16-slot windows
    with pytest.raises(ValueError, match="multiple of vision.window_patches"):
        build.model_config(c)


@pytest.mark.parametrize("max_pixels", [12845056, 1003520, 200704])
def test_max_frame_slots_bounds_every_resized_image(max_pixels):
    """No image the processor can produce (aspect ratio <= 200, any size) spans more slots than
    the bound, and some input reaches it exactly (the bound is tight)."""
    vis = get_preset("qwen2_5_vl_3b").vision
    bound = max_frame_slots(max_pixels, vis)
    rs = np.random.RandomState(0)
    side = math.isqrt(max_pixels)
    sizes = [(int(a), int(b)) for a, b in rs.randint(14, 8 * side, size=(3000, 2))]
    for short in range(14, 40 * 28):  # elongated inputs up to the ratio limit, both orders
        for ratio in (200.0, 199.0, 150.0, 100.0, 60.0):
            sizes += [(short, int(short * ratio)), (int(short * ratio), short)]
    tokens = max_pixels // 28**2
    for h in range(1, 41):  # sides just inside the rounding slack of the largest grids
        for w in range(max(h, tokens // h - 3), tokens // h + 1):
            sizes += [(28 * h + 13, 28 * w), (28 * w, 28 * h + 13), (28 * h + 13, 28 * w + 13)]
    most = 0
    for h, w in sizes:
        if max(h, w) / min(h, w) > 200:
            continue
        rh, rw = smart_resize(h, w, max_pixels=max_pixels)
        slots = required_patches(np.array([[1, rh // 14, rw // 14]]), vis)
        assert slots <= bound, (h, w, rh, rw, slots, bound)
        most = max(most, slots)
    assert most == bound, (most, bound)


def test_model_package_imports_no_run_config_library():
    """model/build.py reads config sections but the model package imports neither
    ml_collections nor rl/data/rewards (layering)."""
    import ast
    import pathlib

    for path in pathlib.Path(build.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        names = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
        names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        bad = [n for n in names if n.split(".")[0] == "ml_collections"
               or n.startswith(("rewardmap_jax.rl", "rewardmap_jax.data", "rewardmap_jax.rewards"))]
        assert not bad, (path.name, bad)
