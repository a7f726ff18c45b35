"""Checkpoint -> Hugging Face directory.

    python -m rewardmap_jax.export --workdir runs/tiny [--step 200] --out exported/tiny \
        [--dtype bfloat16]

Rebuilds the run's model from WORKDIR/config.json (`model.hf_dir`'s config.json, else the
`model.preset`), restores the `params` item of the checkpoint (the latest unless --step) into
it, and writes safetensors + config.json + generation_config.json + tokenizer/processor files
through `rewardmap_jax.model.hf_io.save_hf`; `Qwen2_5_VLForConditionalGeneration.from_pretrained`
loads the result.

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


def _tokenizer_dir(config: mlc.ConfigDict) -> str | None:
    """Where tokenizer/processor files come from: the HF dir, else the data tokenizer."""
    if config.model.get("hf_dir"):
        return str(config.model.hf_dir)
    name = config.get("data", {}).get("tokenizer", "") or "tiny"
    from rewardmap_jax.data.tokenizer import resolve_dir

    return str(resolve_dir(name))


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
    try:
        summary = export_checkpoint(args.workdir, args.out, step=args.step, dtype=args.dtype)
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"export: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
