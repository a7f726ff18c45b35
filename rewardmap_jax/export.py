"""Checkpoint -> Hugging Face directory, streamed: no host ever holds the whole model.

    python -m rewardmap_jax.export --workdir runs/tiny [--step 200] --out exported/tiny \
        [--dtype bfloat16]

Rebuilds the run's model config from WORKDIR/config.json (`model.hf_dir`'s config.json, else the
`model.preset`), restores the `params` item of the checkpoint (the latest unless --step) sharded
over every device of every process (FSDP over all devices, the run's logical-axis rules), and
writes the safetensors files one tensor at a time: each tensor is gathered, converted to the
torch layout and dtype, and appended at its offset in the file (the header is planned from the
shapes first), so a host holds its own shards plus one tensor. Process 0 writes the files; run it
on as many processes as the checkpoint needs memory (`launch/local.sh N python -m
rewardmap_jax.export ...`, or the pod/cluster launchers). Then config.json +
generation_config.json + the run's tokenizer files and chat template, then
`preprocessor_config.json` (the image processor with the run's pixel limits):
`Qwen2_5_VLForConditionalGeneration` and `AutoProcessor.from_pretrained` load the result.

Checkpoint contract (what the trainer saves): `state["params"] = nnx.state(model, nnx.Param)`.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import struct
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections as mlc
import numpy as np

from rewardmap_jax import config_utils
from rewardmap_jax.run import checkpoint as ck

PARAMS_ITEM = "params"
PREPROCESSOR_CONFIG = "preprocessor_config.json"
_ST_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


def _tokenizer_dir(config: mlc.ConfigDict) -> str:
    """Where tokenizer files (and the chat template) come from: the tokenizer the run used."""
    from rewardmap_jax.data.tokenizer import resolve_dir, tokenizer_source

    return str(resolve_dir(tokenizer_source(config)))


def preprocessor_config(config: mlc.ConfigDict, model_cfg: Any) -> dict[str, Any]:
    """`preprocessor_config.json` of the run: transformers' Qwen2-VL image processor with the
    settings the run's pipeline used (`rewardmap_jax.data.image_processing`): the run's
    `data.min_pixels`/`max_pixels` (under both the transformers 4.x keys and 5.x `size`), the
    vision tower's patch, merge and temporal sizes, CLIP mean/std, bicubic resize."""
    from rewardmap_jax.data.image_processing import ImageProcessorConfig

    v = model_cfg.vision
    ip = ImageProcessorConfig(
        min_pixels=int(config.data.min_pixels),
        max_pixels=int(config.data.max_pixels),
        patch_size=v.patch_size,
        merge_size=v.spatial_merge_size,
        temporal_patch_size=v.temporal_patch_size,
    )
    return {
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2_5_VLProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "resample": 3,  # PIL.Image.BICUBIC
        "do_rescale": True,
        "rescale_factor": ip.rescale_factor,
        "do_normalize": True,
        "image_mean": list(ip.image_mean),
        "image_std": list(ip.image_std),
        "min_pixels": ip.min_pixels,
        "max_pixels": ip.max_pixels,
        "size": {"shortest_edge": ip.min_pixels, "longest_edge": ip.max_pixels},
        "patch_size": ip.patch_size,
        "temporal_patch_size": ip.temporal_patch_size,
        "merge_size": ip.merge_size,
    }


def _export_mesh(config: mlc.ConfigDict):
    """FSDP over every device of every process: each host restores only its shards."""
    from rewardmap_jax.model import sharding

    m = mlc.ConfigDict(config.mesh.to_dict())
    m.data, m.fsdp, m.tensor = 1, -1, 1
    return sharding.make_mesh(m)


def restore_params(workdir: str | Path, step: int | None = None) -> tuple[int, Any, Any, Any]:
    """(step, params nnx.State sharded over all devices, model config, run config)."""
    from flax import nnx

    from rewardmap_jax.model import sharding
    from rewardmap_jax.model.build import model_config
    from rewardmap_jax.model.qwen2_5_vl import Qwen2_5_VL

    config = config_utils.load_config(workdir)
    cfg = model_config(config)
    state = nnx.state(nnx.eval_shape(lambda: Qwen2_5_VL(cfg, nnx.Rngs(params=0))), nnx.Param)
    shardings = sharding.state_shardings(
        state, _export_mesh(config), sharding.rules_from_config(config.mesh),
        tuple(config.mesh.get("path_rules", ())))
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            state, shardings)
    with ck.CheckpointManager(workdir, async_save=False, handle_preemption=False) as mgr:
        steps = mgr.all_steps()
        if not steps:
            raise FileNotFoundError(f"no complete checkpoint in {mgr.directory}")
        try:
            restored = mgr.restore({PARAMS_ITEM: abstract}, step=step, data_state=False)
        except (ValueError, KeyError, TypeError) as e:
            if isinstance(e, KeyError) and "has no item" in str(e):
                raise
            raise ValueError(
                f"checkpoint params in {mgr.directory} do not match the model the run config "
                f"describes (model.preset={config.model.preset!r}, "
                f"hf_dir={config.model.get('hf_dir')!r}): {e}"
            ) from e
    return restored.step, restored.state[PARAMS_ITEM], cfg, config


def restore_model(workdir: str | Path, step: int | None = None) -> tuple[int, Any, Any]:
    """(step, model, run config): the run's model with the checkpoint's params (sharded over
    all devices)."""
    from flax import nnx

    from rewardmap_jax.model.qwen2_5_vl import Qwen2_5_VL

    step, params, cfg, config = restore_params(workdir, step)
    model = nnx.eval_shape(lambda: Qwen2_5_VL(cfg, nnx.Rngs(params=0)))
    nnx.update(model, params)
    return step, model, config


# Host memory bound of the streamed write: a tensor is gathered this many bytes at a time.
CHUNK_BYTES = 16 << 20


@functools.cache
def _slicer(size: int, axis: int, sharding: Any) -> Any:
    """jit(x, start) -> x[start:start+size] along `axis`, replicated on every device."""
    return jax.jit(lambda x, start: jax.lax.dynamic_slice_in_dim(x, start, size, axis),
                   out_shardings=sharding)


def _torch_chunks(x: jax.Array, kind: str, cfg: Any, chunk_bytes: int):
    """The parameter in the torch layout as consecutive row blocks (numpy), each gathered from
    the devices that hold it (a collective when they span processes: every process iterates)."""
    from rewardmap_jax.model import hf_io

    if kind == "patch" or x.ndim == 0:  # small (the patch embedding): whole
        yield hf_io._to_torch_layout(_gather(x, x.shape[0] if x.ndim else 0, 0), kind, cfg)
        return
    axis = 1 if kind == "linear" else 0  # our axis that becomes the torch rows
    row_bytes = x.size // x.shape[axis] * x.dtype.itemsize
    size = max(1, min(x.shape[axis], chunk_bytes // max(row_bytes, 1)))
    for start in range(0, x.shape[axis], size):
        k = min(size, x.shape[axis] - start)
        block = _gather(x, k, axis, start)
        yield block.T if kind == "linear" else block


def _gather(x: jax.Array, size: int, axis: int, start: int = 0) -> np.ndarray:
    if x.ndim == 0 or (start == 0 and size == x.shape[axis]) and x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    mesh = getattr(x.sharding, "mesh", None)
    out = (jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()) if mesh is not None
           else x.sharding)
    y = _slicer(size, axis, out)(x, start)
    return np.asarray(y.addressable_data(0))


def _np_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def write_weights(params: Any, cfg: Any, out_dir: str | Path, dtype: str,
                  max_shard_bytes: int = 4 << 30, chunk_bytes: int = CHUNK_BYTES) -> list[str]:
    """Writes `params` (nnx.State, any sharding, any number of processes) as HF safetensors
    (`model.safetensors`, or numbered shards of at most `max_shard_bytes` plus
    `model.safetensors.index.json`), one block of at most `chunk_bytes` of one tensor at a time
    (the header is planned from the shapes first); every process must call it, process 0 writes.
    Returns the file names."""
    from flax import nnx

    from rewardmap_jax.model import hf_io

    if dtype not in _ST_DTYPES:
        raise ValueError(f"export dtype must be one of {sorted(_ST_DTYPES)}, got {dtype!r}")
    out_dir = Path(out_dir)
    primary = jax.process_index() == 0
    flat = dict(nnx.to_flat_state(params))
    mapping = hf_io.hf_param_map(cfg)
    item = _np_dtype(dtype).itemsize
    # Shapes in the torch layout, from zero-stride stand-ins (no data).
    shapes = {k: hf_io._to_torch_layout(
        np.broadcast_to(np.zeros((), np.uint8), flat[p].get_value().shape), kind, cfg).shape
        for k, (p, kind) in mapping.items()}
    plan: list[list[str]] = [[]]
    size = 0
    for key in mapping:
        nbytes = int(np.prod(shapes[key])) * item
        if size and size + nbytes > max_shard_bytes:
            plan.append([])
            size = 0
        plan[-1].append(key)
        size += nbytes
    names = (["model.safetensors"] if len(plan) == 1 else
             [f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors" for i in range(len(plan))])
    if primary:
        out_dir.mkdir(parents=True, exist_ok=True)
    total = 0
    for name, keys in zip(names, plan, strict=True):
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for key in keys:
            end = offset + int(np.prod(shapes[key])) * item
            header[key] = {"dtype": _ST_DTYPES[dtype], "shape": list(shapes[key]),
                           "data_offsets": [offset, end]}
            offset = end
        total += offset
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        f = open(out_dir / name, "wb") if primary else None
        try:
            if f is not None:
                f.write(struct.pack("<Q", len(blob)) + blob)
            for key in keys:
                path, kind = mapping[key]
                for block in _torch_chunks(flat[path].get_value(), kind, cfg, chunk_bytes):
                    if f is not None:
                        y = np.ascontiguousarray(block.astype(_np_dtype(dtype), copy=False))
                        f.write(y.view(np.uint8).data)  # no bytes copy
                    del block
        finally:
            if f is not None:
                f.close()
    if primary and len(names) > 1:
        weight_map = {k: n for n, keys in zip(names, plan, strict=True) for k in keys}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return names


def _write_configs(config: mlc.ConfigDict, cfg: Any, out_dir: Path, dtype: str) -> None:
    """config.json, generation_config.json, the tokenizer files of the run's tokenizer and the
    run's `preprocessor_config.json`."""
    from rewardmap_jax.model import hf_io
    from rewardmap_jax.model.config import to_hf_config

    hf_cfg = to_hf_config(cfg)
    hf_cfg["torch_dtype"] = hf_cfg["dtype"] = dtype
    (out_dir / "config.json").write_text(json.dumps(hf_cfg, indent=2))
    (out_dir / "generation_config.json").write_text(
        json.dumps(hf_io._generation_config(cfg), indent=2))
    source_dir = _tokenizer_dir(config)
    for fname in (*hf_io.TOKENIZER_FILES, "generation_config.json"):
        src = os.path.join(source_dir, fname)
        if os.path.exists(src):
            shutil.copyfile(src, out_dir / fname)
    # Written after the copies: the run's pixel limits, not those of model.hf_dir.
    (out_dir / PREPROCESSOR_CONFIG).write_text(
        json.dumps(preprocessor_config(config, cfg), indent=2) + "\n")


def export_checkpoint(
    workdir: str | Path, out_dir: str | Path, *, step: int | None = None, dtype: str | None = None,
    max_shard_bytes: int = 4 << 30,
) -> dict[str, Any]:
    """Writes the checkpoint's policy as an HF directory (every process calls it; process 0
    writes); returns a summary dict."""
    step, params, cfg, config = restore_params(workdir, step)
    out_dir = Path(out_dir)
    # The model's compute dtype: fp32 master weights of a bf16 model export as bf16, the dtype
    # the Hugging Face checkpoints are published in.
    dtype = dtype or config.model.compute_dtype
    files = write_weights(params, cfg, out_dir, dtype, max_shard_bytes)
    summary = {
        "workdir": str(workdir),
        "step": step,
        "out": str(out_dir),
        "safetensors": files,
        "dtype": dtype,
    }
    if jax.process_index() == 0:
        _write_configs(config, cfg, out_dir, dtype)
        (out_dir / "rewardmap_export.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rewardmap_jax.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workdir", required=True, help="run directory (config, checkpoints)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
    parser.add_argument("--out", required=True, help="output Hugging Face directory")
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default=None,
        help="default: the run's model.compute_dtype"
    )
    args = parser.parse_args(argv)
    # Resolved once, here: Orbax refuses relative checkpoint paths.
    workdir, out = config_utils.absolute_path(args.workdir), config_utils.absolute_path(args.out)
    from rewardmap_jax.run import distributed

    # Several processes (launch/local.sh, a pod, SLURM): each restores and streams its shards.
    distributed.initialize_distributed({"dist_mode": "auto"})
    try:
        summary = export_checkpoint(workdir, out, step=args.step, dtype=args.dtype)
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"export: {e}", file=sys.stderr)
        return 1
    if jax.process_index() == 0:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
