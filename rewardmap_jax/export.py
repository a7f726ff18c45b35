"""Checkpoint -> Hugging Face directory.

    python -m rewardmap_jax.export --workdir runs/tiny [--step 200] --out exported/tiny \
        [--dtype bfloat16]

Rebuilds the run's model from WORKDIR/config.json (`model.hf_dir`'s config.json, else the
`model.preset`), restores the `params` item of the checkpoint (the latest unless --step) into
it, and writes safetensors + config.json + generation_config.json + the run's tokenizer files and
chat template through `rewardmap_jax.model.hf_io.save_hf`, then `preprocessor_config.json` (the
image processor with the run's pixel limits). `Qwen2_5_VLForConditionalGeneration` and
`AutoProcessor.from_pretrained` load the result.

Checkpoint contract (what the trainer saves): `state["params"] = nnx.state(model, nnx.Param)`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections as mlc

from rewardmap_jax import config_utils
from rewardmap_jax.run import checkpoint as ck

PARAMS_ITEM = "params"
PREPROCESSOR_CONFIG = "preprocessor_config.json"


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


def restore_model(workdir: str | Path, step: int | None = None) -> tuple[int, Any, Any]:
    """(step, model, run config): the run's model with the checkpoint's params, on one device."""
    from flax import nnx

    from rewardmap_jax.model.build import model_config
    from rewardmap_jax.model.qwen2_5_vl import Qwen2_5_VL

    config = config_utils.load_config(workdir)
    cfg = model_config(config)
    model = nnx.eval_shape(lambda: Qwen2_5_VL(cfg, nnx.Rngs(params=0)))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
        nnx.state(model, nnx.Param),
    )
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
    nnx.update(model, restored.state[PARAMS_ITEM])
    return restored.step, model, config


def export_checkpoint(
    workdir: str | Path, out_dir: str | Path, *, step: int | None = None, dtype: str | None = None
) -> dict[str, Any]:
    """Writes the checkpoint's policy as an HF directory; returns a summary dict."""
    from rewardmap_jax.model import hf_io

    step, model, config = restore_model(workdir, step)
    out_dir = Path(out_dir)
    # The model's compute dtype: fp32 master weights of a bf16 model export as bf16, the dtype
    # the Hugging Face checkpoints are published in.
    dtype = dtype or config.model.compute_dtype
    files = hf_io.save_hf(model, str(out_dir), dtype=dtype, source_dir=_tokenizer_dir(config))
    # Written after save_hf's copies: the run's pixel limits, not those of model.hf_dir.
    (out_dir / PREPROCESSOR_CONFIG).write_text(
        json.dumps(preprocessor_config(config, model.cfg), indent=2) + "\n"
    )
    summary = {
        "workdir": str(workdir),
        "step": step,
        "out": str(out_dir),
        "safetensors": files,
        "dtype": dtype,
    }
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
    try:
        summary = export_checkpoint(workdir, out, step=args.step, dtype=args.dtype)
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"export: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
