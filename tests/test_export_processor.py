"""The exported directory is what transformers users need for image inference: its processor
(image processor with the run's pixel limits, tokenizer, chat template) turns a map image and a
question into model inputs, and `Qwen2_5_VLForConditionalGeneration.generate` (greedy) answers
exactly what the JAX policy answers through `python -m rewardmap_jax.evaluate`.

Everything runs from relative paths (`--workdir run --out hf`), as a user types them.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rewardmap_jax import config_utils, evaluate, export
from rewardmap_jax.data import prompts
from rewardmap_jax.data.image_processing import ImageProcessorConfig, grid_for_size
from rewardmap_jax.evaluation import data as eval_data
from rewardmap_jax.mapworld.generator import get_world
from rewardmap_jax.model import build
from rewardmap_jax.model.qwen2_5_vl import Qwen2_5_VL
from rewardmap_jax.run import checkpoint as ck

torch = pytest.importorskip("torch")
# Pixel limits below the tiny maps' 84 x 84: images are downscaled to 56 x 56 (16 patches,
# 4 image tokens instead of 9), so an export without the run's limits gives other inputs.
PIXELS = 56 * 56
MAX_NEW_TOKENS = 12


def _processor(hf_dir: str):
    """`AutoProcessor.from_pretrained(hf_dir)`, or its image and text halves.

    transformers 5 builds a Qwen2.5-VL processor's *video* half with torchvision, which has no
    CPU build here; without it AutoProcessor stops at the video processor, after it has built
    the image processor and the tokenizer from the export. That failure (and no other) is
    accepted, and the two halves are then loaded the same way (Auto classes) and applied as
    `Qwen2_5_VLProcessor` applies them (`_inputs`).
    """
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    try:
        processor = AutoProcessor.from_pretrained(hf_dir)
        return processor, processor.image_processor, processor.tokenizer
    except (ImportError, ModuleNotFoundError) as e:
        if "torchvision" not in str(e).lower():
            raise
    return None, AutoImageProcessor.from_pretrained(hf_dir), AutoTokenizer.from_pretrained(hf_dir)


def _inputs(processor, image_processor, tokenizer, image, messages) -> dict:
    """`processor(images=[image], text=[chat prompt])`: pixel rows, grid, ids with each
    `<|image_pad|>` repeated grid.prod() / merge_size**2 times, and the image-token mask."""
    text = (processor or tokenizer).apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    if processor is not None:
        return dict(processor(images=[image], text=[text], return_tensors="pt"))
    pix = image_processor(images=[image], return_tensors="pt")
    n = int(pix["image_grid_thw"][0].prod()) // image_processor.merge_size**2
    text = text.replace("<|image_pad|>", "<|image_pad|>" * n)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    image_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": pix["pixel_values"],
        "image_grid_thw": pix["image_grid_thw"],
        "mm_token_type_ids": (ids == image_id).long(),
    }


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    """A relative run directory `run`: the tiny preset at PIXELS pixels, one random-init
    checkpoint (the export and both generators read the same params)."""
    monkeypatch.chdir(tmp_path)
    config = config_utils.get_config(preset="tiny")
    config.data.min_pixels = config.data.max_pixels = PIXELS
    config.eval.max_new_tokens = MAX_NEW_TOKENS
    config.eval.batch_size = 8
    config_utils.save_config(config, "run")
    model = Qwen2_5_VL(build.model_config(config), nnx.Rngs(params=3))
    # Matrices x10: at the init scale (std 0.02) the residual stream stays close to the last
    # input embedding and the tied head repeats the prompt's last token ("\n") whatever the
    # image; scaled, greedy answers depend on image and question (top-2 logit gaps >= 0.01).
    params = jax.tree.map(lambda x: x * 10 if x.ndim >= 2 else x, nnx.state(model, nnx.Param))
    with ck.CheckpointManager(tmp_path / "run", async_save=False, handle_preemption=False) as m:
        m.save(1, {"params": params, "step": jnp.int32(1)})
    return config


def test_exported_processor_and_generate_match_the_jax_policy(run_dir, capsys):
    from transformers import Qwen2_5_VLForConditionalGeneration

    config = run_dir
    assert export.main(["--workdir", "run", "--out", "hf"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    # The JAX policy's greedy answers, through the evaluate CLI (relative paths as well).
    argv = ["--workdir", "run", "--data", "mapworld:tiny", "--split", "test",
            "--questions_per_task", "1", "--tag", "jax", "--out", "reports", "--no_progress"]
    assert evaluate.main(argv) == 0, capsys.readouterr().err
    report = json.loads(open("reports/jax.json").read())
    jax_answers = {row["uid"]: row["completion"] for row in report["samples"]}
    world = get_world("tiny", highlight=bool(config.train.highlight_stations))
    records = eval_data.mapworld_data(world, "test", 1).records
    assert sorted(jax_answers) == sorted(r.uid for r in records)

    processor, image_processor, tokenizer = _processor("hf")
    assert (image_processor.size.shortest_edge, image_processor.size.longest_edge) == (
        PIXELS, PIXELS)  # fmt: skip
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained("hf", dtype=torch.float32).eval()
    vision_ids = [hf.config.vision_start_token_id, hf.config.vision_end_token_id,
                  hf.config.vision_token_id, hf.config.image_token_id, hf.config.video_token_id]
    ours = ImageProcessorConfig(min_pixels=PIXELS, max_pixels=PIXELS)
    hf_answers = {}
    for record in records:
        messages = prompts.build_messages(record, config.data.system_prompt)
        inputs = _inputs(processor, image_processor, tokenizer, record.figure, messages)
        # The run's image geometry (what the JAX pipeline fed the policy).
        grid = grid_for_size(record.figure.height, record.figure.width, ours)
        assert inputs["image_grid_thw"].tolist() == [list(grid)] == [[1, 4, 4]]
        with torch.no_grad():
            # generation_config.json gives eos (<|im_end|>) and pad; the JAX sampler never
            # emits vision tokens, so neither may generate.
            out = hf.generate(**inputs, do_sample=False, max_new_tokens=MAX_NEW_TOKENS,
                              bad_words_ids=[[i] for i in vision_ids])
        new = out[0, inputs["input_ids"].shape[1]:].tolist()
        if hf.generation_config.eos_token_id in new:
            new = new[: new.index(hf.generation_config.eos_token_id)]
        hf_answers[record.uid] = tokenizer.decode(new, skip_special_tokens=True)
    assert hf_answers == jax_answers
    assert len(set(hf_answers.values())) == len(records)  # answers depend on the inputs
    assert np.mean([len(a) for a in hf_answers.values()]) > 5
