"""HF directory import (every key layout, bf16, shards, streamed into shardings) and export
reloaded by transformers."""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors import safe_open
from safetensors.torch import save_file as torch_save_file
from transformers import Qwen2_5_VLForConditionalGeneration

from configs.curriculum import get_config
from rewardmap_jax.model import hf_io, qwen2_5_vl, rope_index
from rewardmap_jax.model import sharding as sh
from tests.model import hf_reference as ref

GRIDS = np.array([[1, 6, 10], [1, 4, 4]])


def _keys(d):
    keys = set()
    for f in os.listdir(d):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(d, f), framework="np") as fh:
                keys |= set(fh.keys())
    return keys


def _params(model):
    return {k: np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _hf_reference_logits(hf, cfg):
    ids, mask = ref.left_padded_batch(GRIDS, [[0, 1]])
    pos, _ = rope_index.get_rope_index(ids, cfg, mask, image_grid_thw=GRIDS)
    return ref.hf_logits(hf, ids, mask, ref.pixels(GRIDS), GRIDS, pos)


def _roundtrip_through_transformers(hf, src_dir, tmp_path, **save_kw):
    """Import src_dir, export, reload in transformers; logits vs the original HF model."""
    model = hf_io.load_hf(src_dir)
    out = tmp_path / "export"
    names = hf_io.save_hf(model, str(out), source_dir=src_dir, **save_kw)
    reloaded = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(out), dtype=torch.float32)
    reloaded.config._attn_implementation = "eager"
    reloaded.eval()
    want = _hf_reference_logits(hf, model.cfg)
    got = _hf_reference_logits(reloaded, model.cfg)
    err = np.abs(got - want).max()
    print(f"export -> transformers reload: max|dlogit| {err:.2e}")
    assert err <= 1e-5
    for name in names:
        with safe_open(str(out / name), framework="np") as fh:
            assert fh.metadata() == {"format": "pt"}
    return model, out


def test_canonical_layout_untied_roundtrip(hf_untied, tmp_path):
    hf, d = hf_untied
    assert any(k.startswith("visual.") for k in _keys(d))
    model, out = _roundtrip_through_transformers(hf, d, tmp_path)
    keys = _keys(out)
    assert "lm_head.weight" in keys and keys == _keys(d)
    for fname in ("config.json", "generation_config.json"):
        assert os.path.exists(out / fname)
    np.testing.assert_array_equal(
        np.asarray(model.language_model.embed_tokens[...]),
        hf.model.language_model.embed_tokens.weight.detach().numpy(),
    )


def test_tied_head_has_no_lm_head_on_disk(hf_tied, tmp_path):
    hf, d = hf_tied
    src = tmp_path / "with_tokenizer"
    shutil.copytree(d, src)
    (src / "tokenizer.json").write_text('{"marker": 1}')
    (src / "chat_template.jinja").write_text("{{ messages }}")
    model, out = _roundtrip_through_transformers(hf, str(src), tmp_path)
    assert (out / "tokenizer.json").read_text() == '{"marker": 1}'
    assert (out / "chat_template.jinja").exists()
    assert model.lm_head is None
    assert "lm_head.weight" not in _keys(out)
    with open(out / "config.json") as f:
        assert json.load(f)["tie_word_embeddings"] is True


def test_module_tree_layout_and_sharded_export(hf_untied, tmp_path):
    hf, d = hf_untied
    src = tmp_path / "v5_layout"
    hf.save_pretrained(src, save_original_format=False, max_shard_size="200KB")
    keys = _keys(src)
    assert any(k.startswith("model.language_model.") for k in keys)
    assert any(k.startswith("model.visual.") for k in keys)
    assert os.path.exists(src / "model.safetensors.index.json")
    canon = _params(hf_io.load_hf(d))
    v5 = _params(hf_io.load_hf(str(src)))
    assert canon.keys() == v5.keys()
    for k in canon:
        np.testing.assert_array_equal(canon[k], v5[k])
    _, out = _roundtrip_through_transformers(hf, str(src), tmp_path, max_shard_bytes=100_000)
    with open(out / "model.safetensors.index.json") as f:
        index = json.load(f)
    assert len(set(index["weight_map"].values())) > 1


def test_base_model_save_layout(hf_tied, tmp_path):
    hf, d = hf_tied
    src = tmp_path / "base"
    hf.model.save_pretrained(src)
    keys = _keys(src)
    assert any(k.startswith("language_model.") for k in keys)
    assert not any(k.startswith("lm_head") for k in keys)
    base = _params(hf_io.load_hf(str(src)))
    canon = _params(hf_io.load_hf(d))
    for k in canon:
        np.testing.assert_array_equal(canon[k], base[k])


def test_bf16_checkpoint_imports(hf_tied, tmp_path):
    hf, _ = hf_tied
    src = tmp_path / "bf16"
    bf = ref.hf_model(tie=True, seed=1).to(torch.bfloat16)
    bf.save_pretrained(src)
    model = hf_io.load_hf(str(src))  # param dtype float32 by default
    got = np.asarray(model.visual.blocks[0].attn.qkv.kernel[...])
    want = bf.model.visual.blocks[0].attn.qkv.weight.detach().float().numpy().T
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.float32
    model16 = hf_io.load_hf(str(src), param_dtype="bfloat16", compute_dtype="bfloat16")
    assert model16.visual.blocks[0].attn.qkv.kernel[...].dtype == jax.numpy.bfloat16


def test_pickle_only_directory_is_refused(hf_tied, tmp_path):
    _, d = hf_tied
    src = tmp_path / "pickle"
    src.mkdir()
    (src / "config.json").write_text(open(os.path.join(d, "config.json")).read())
    (src / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="pickle"):
        hf_io.load_hf(str(src))


def test_missing_and_unexpected_keys_are_listed(hf_untied, tmp_path):
    hf, d = hf_untied
    src = tmp_path / "bad"
    src.mkdir()
    (src / "config.json").write_text(open(os.path.join(d, "config.json")).read())
    sd = {k: v.contiguous() for k, v in hf.state_dict().items()
          if k != "model.language_model.norm.weight"}
    sd["model.visual.extra.weight"] = torch.zeros(2)
    torch_save_file(sd, str(src / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError) as err:
        hf_io.load_hf(str(src))
    msg = str(err.value)
    assert "model.norm.weight" in msg and "model.visual.extra.weight" in msg
    assert "missing keys (1)" in msg and "unexpected keys (1)" in msg


def test_missing_directory_and_shape_mismatch(hf_untied, tmp_path):
    with pytest.raises(FileNotFoundError):
        hf_io.load_hf(str(tmp_path / "nope"))
    hf, d = hf_untied
    cfg = hf_io.load_hf_config(d)
    smaller = cfg.replace(text=cfg.text.__class__(**{**cfg.text.__dict__, "vocab_size": 128}))
    with pytest.raises(ValueError, match="shape mismatches"):
        hf_io.load_hf(d, smaller)


def _whole_tensor_reference(hf_dir, cfg):
    """The loader as it was before streaming (kept here as the reference): every tensor read
    whole onto the default device through safetensors' flax framework, put in our layout with
    jnp (transpose; Conv3d flattened), cast with jnp to the param dtype."""
    mapping = hf_io.hf_param_map(cfg)
    out = {}
    for path in hf_io._safetensor_files(hf_dir):
        with safe_open(path, framework="flax") as fh:
            for key in fh.keys():
                ckey = hf_io.canonical_key(key)
                if ckey not in mapping:
                    continue
                ours, kind = mapping[ckey]
                x = fh.get_tensor(key)
                x = x.T if kind == "linear" else x.reshape(x.shape[0], -1).T if kind == "patch" \
                    else x
                out[ours] = np.asarray(x.astype(cfg.pdtype))
    return out


def _mesh(shape):
    return jax.sharding.Mesh(np.asarray(jax.devices()[:8]).reshape(shape), sh.MESH_AXES)


@pytest.mark.parametrize("mesh_shape,file_dtype,param_dtype", [
    ((1, 8, 1), torch.float32, "float32"),
    ((2, 2, 2), torch.bfloat16, "float32"),
    ((1, 4, 2), torch.float32, "bfloat16"),
    ((2, 4, 1), torch.bfloat16, "bfloat16"),
])
def test_streamed_sharded_load_equals_whole_tensor_load(tmp_path, mesh_shape, file_dtype,
                                                        param_dtype):
    """Each tensor read block by block into its shards (partly replicated on (2, 2, 2) and
    (2, 4, 1)) from a multi-shard 5.x-layout save: bit-identical to the whole-tensor loader,
    every parameter in the sharding `state_shardings` asks for."""
    src = tmp_path / "src"
    ref.hf_model(tie=False, seed=3).to(file_dtype).save_pretrained(
        src, save_original_format=False, max_shard_size="100KB")
    assert len(hf_io._safetensor_files(str(src))) > 2
    cfg = hf_io.load_hf_config(str(src), param_dtype=param_dtype)
    mesh = _mesh(mesh_shape)
    rules = sh.rules_from_config(get_config().mesh)
    _, abstract = nnx.split(qwen2_5_vl.abstract_model(cfg))
    shardings = sh.state_shardings(abstract, mesh, rules)
    model = hf_io.load_hf(str(src), cfg, shardings=shardings)
    want = _whole_tensor_reference(str(src), cfg)
    targets = dict(nnx.to_flat_state(shardings))
    params = nnx.to_flat_state(nnx.state(model, nnx.Param))
    assert len(params) == len(want) == len(hf_io.hf_param_map(cfg))
    n_sharded = 0
    for path, var in params:
        got = var.get_value()
        assert got.dtype == jnp.dtype(param_dtype), path
        assert got.sharding == targets[path].get_value(), path
        n_sharded += not got.sharding.is_fully_replicated
        np.testing.assert_array_equal(np.asarray(got), want[path], err_msg=str(path))
    assert n_sharded > len(params) // 2  # the check is not vacuous: most tensors are split


def test_default_load_is_on_one_device(hf_tied):
    _, d = hf_tied
    model = hf_io.load_hf(d)
    params = nnx.to_flat_state(nnx.state(model, nnx.Param))
    assert {v.get_value().devices().pop() for _, v in params} == {jax.local_devices()[0]}


def test_header_errors_before_any_tensor_is_read(hf_untied, tmp_path, monkeypatch):
    """Keys stored twice (two layouts mixed) and bad shapes are refused from the headers: no
    tensor block is read first."""
    hf, d = hf_untied
    src = tmp_path / "mixed"
    src.mkdir()
    (src / "config.json").write_text(open(os.path.join(d, "config.json")).read())
    sd = {k: v.contiguous() for k, v in hf.state_dict().items()}
    torch_save_file(sd, str(src / "a.safetensors"), metadata={"format": "pt"})
    torch_save_file({"model.norm.weight": sd["model.language_model.norm.weight"]},
                    str(src / "b.safetensors"), metadata={"format": "pt"})
    monkeypatch.setattr(hf_io, "_load_tensor", lambda *a: pytest.fail("read a tensor"))
    with pytest.raises(ValueError, match=r"keys stored more than once \(1\).*model.norm.weight"):
        hf_io.load_hf(str(src))
