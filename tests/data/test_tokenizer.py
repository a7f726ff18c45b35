"""The built-in tiny tokenizer: determinism, contract ids, round trip, Qwen2-VL chat template."""

from __future__ import annotations

import pytest

from rewardmap_jax.data import tokenizer_build
from rewardmap_jax.data.tokenizer import (
    TINY_TOKENIZER_DIR,
    load_tokenizer,
    resolve_dir,
    special_token_ids,
)

CONTRACT_IDS = {  # /work/helpers/tokens.md
    "<|endoftext|>": 1024,
    "<|im_start|>": 1025,
    "<|im_end|>": 1026,
    "<|object_ref_start|>": 1027,
    "<|object_ref_end|>": 1028,
    "<|box_start|>": 1029,
    "<|box_end|>": 1030,
    "<|quad_start|>": 1031,
    "<|quad_end|>": 1032,
    "<|vision_start|>": 1033,
    "<|vision_end|>": 1034,
    "<|vision_pad|>": 1035,
    "<|image_pad|>": 1036,
    "<|video_pad|>": 1037,
}


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


def test_rebuild_is_byte_identical(tmp_path):
    out = tokenizer_build.build_tiny_tokenizer(tmp_path / "tok")
    committed = sorted(p.name for p in TINY_TOKENIZER_DIR.iterdir())
    assert sorted(p.name for p in out.iterdir()) == committed
    for name in committed:
        assert (out / name).read_bytes() == (TINY_TOKENIZER_DIR / name).read_bytes(), name


def test_contract_ids_and_size(tok):
    assert len(tok) == 1024 + len(CONTRACT_IDS)
    assert tok.convert_tokens_to_ids(list(CONTRACT_IDS)) == list(CONTRACT_IDS.values())
    regular = [i for t, i in tok.get_vocab().items() if t not in CONTRACT_IDS]
    assert sorted(regular) == list(range(1024))
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id) == (1024, 1024, 1026)
    assert tok.padding_side == "left"
    ids = special_token_ids(tok)
    assert (ids.pad, ids.eos, ids.image_pad, ids.vision_start, ids.vision_end) == (
        1024, 1026, 1036, 1033, 1034)
    assert set(ids.vision) == {1033, 1034, 1035, 1036, 1037}


@pytest.mark.parametrize(
    "text",
    [
        "Route Name: Red Line\nDeparture Stop: A\nArrival Stop: Station B\n--\nRoute Name: Line 3",
        r"So the final answer is \boxed{no}.",
        "  leading and trailing spaces  \n\n\ttabs\r\n",
        "Zürich Hauptbahnhof – 北京南站（换乘站） Szent Gellért tér, café ½ 🚇",
        "numbers 0123456789 and 3.14159, 10-12%",
        "",
    ],
)
def test_round_trip(tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert all(0 <= i < 1024 for i in ids)  # plain text never produces special ids
    assert tok.decode(ids) == text


def test_special_tokens_are_atomic(tok):
    ids = tok("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>")[
        "input_ids"
    ]
    assert ids[0] == 1025 and ids[-1] == 1026
    j = ids.index(1033)
    assert tok.decode(ids[1:j]) == "user\n" and ids[j : j + 3] == [1033, 1036, 1034]


def test_typical_answers_are_short(tok):
    def n(s):
        return len(tok(s, add_special_tokens=False)["input_ids"])

    assert n(r"\boxed{yes}") <= 3 and n(r"\boxed{no}") <= 3
    assert n(r"\boxed{A}") <= 4 and n(r"\boxed{7}") <= 4
    assert n("Route Name: Blue Line\nDeparture Stop: C\nArrival Stop: F") <= 16
    # the byte-level fallback alone would need one token per byte
    assert n("According to the subway map, how many lines pass through") <= 11


def _chatml(system: str, turns: list[tuple[str, str]], gen: bool) -> str:
    """An independent ChatML rendering (Qwen2-VL hub template semantics)."""
    out = f"<|im_start|>system\n{system}<|im_end|>\n"
    for role, content in turns:
        out += f"<|im_start|>{role}\n{content}<|im_end|>\n"
    return out + ("<|im_start|>assistant\n" if gen else "")


VIS = "<|vision_start|><|image_pad|><|vision_end|>"


def test_chat_template_matches_qwen2_vl(tok):
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\nQ?"}]}]
    got = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert got == _chatml("You are a helpful assistant.", [("user", VIS + "\nQ?")], True)

    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Look: "}, {"type": "image"},
                                     {"type": "image_url", "image_url": "x"}]},
        {"role": "assistant", "content": r"\boxed{2}"},
        {"role": "user", "content": "And?"},
    ]
    got = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
    want = _chatml("Be brief.", [("user", "Look: " + VIS + VIS), ("assistant", r"\boxed{2}"),
                                 ("user", "And?")], False)
    assert got == want
    got = tok.apply_chat_template(msgs[1:2], tokenize=False, add_vision_id=True)
    assert "Look: Picture 1: " + VIS + "Picture 2: " + VIS in got

    # token ids follow HF's Qwen2-VL integration test pattern:
    # <|im_start|> system \n ... <|im_end|> \n <|im_start|> user \n <|vision_start|> <|image_pad|>
    ids = tok.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
        tokenize=True, add_generation_prompt=True, return_dict=False,
    )
    ids = list(ids["input_ids"] if isinstance(ids, dict) else ids)
    nl = tok.convert_tokens_to_ids("Ċ")
    assert ids[0] == 1025 and tok.decode(ids[1 : ids.index(nl)]) == "system"
    i = ids.index(1026)
    assert ids[i + 1 : i + 2] == [nl] and ids[i + 2] == 1025
    j = ids.index(1033)
    assert tok.decode(ids[i + 3 : j - 1]) == "user" and ids[j - 1 : j + 2] == [nl, 1033, 1036]
    k = len(ids) - 1 - ids[::-1].index(1025)
    assert tok.decode(ids[k + 1 : -1]) == "assistant" and ids[-1] == nl


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_dir(tmp_path / "nope")
    assert resolve_dir("tiny") == TINY_TOKENIZER_DIR


def _model_dir(tmp_path, layout):
    """A real-model-like directory: tokenizer files (template inside tokenizer_config.json, as
    the Qwen2.5-VL hub repo has it) and a preprocessor config in the 4.x or 5.x layout."""
    import json
    import shutil

    d = tmp_path / layout
    d.mkdir()
    shutil.copy(TINY_TOKENIZER_DIR / "tokenizer.json", d)
    cfg = json.loads((TINY_TOKENIZER_DIR / "tokenizer_config.json").read_text())
    cfg["chat_template"] = (TINY_TOKENIZER_DIR / "chat_template.jinja").read_text()
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    pre = {"image_processor_type": "Qwen2VLImageProcessor", "patch_size": 14,
           "temporal_patch_size": 2, "merge_size": 2}
    if layout == "hf4":
        pre.update(min_pixels=3136, max_pixels=200704)
    else:
        pre["size"] = {"shortest_edge": 3136, "longest_edge": 200704}
    (d / "preprocessor_config.json").write_text(json.dumps(pre))
    return d


@pytest.mark.parametrize("layout", ["hf4", "hf5"])
def test_real_model_directory(tmp_path, layout):
    import numpy as np

    from rewardmap_jax.data.fast_tokenizer import FastTokenizer
    from rewardmap_jax.data.image_processing import ImageProcessorConfig, preprocess
    from rewardmap_jax.data.tokenizer import load_image_processor, preprocessor_pixel_limits

    d = _model_dir(tmp_path, layout)
    limits = preprocessor_pixel_limits(d)
    assert limits == {"min_pixels": 3136, "max_pixels": 200704}
    hf_tok, fast = load_tokenizer(d), FastTokenizer(d)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\nQ"}]}]
    assert fast.apply_chat_template(msgs, add_generation_prompt=True) == \
        hf_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    from PIL import Image

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 500, 3), np.uint8))
    ref = load_image_processor(d)(images=[img], return_tensors="np")
    ours, grid = preprocess(img, ImageProcessorConfig(**limits))
    assert np.array_equal(grid, ref["image_grid_thw"][0])
    assert np.abs(ours - ref["pixel_values"]).max() <= 1e-5


def test_qwen_id_tokenizer_has_the_hub_layout(tmp_path):
    """The tiny BPE re-laid out at Qwen2.5-VL's ids (scripts/rehearsal.py's checkpoints): the
    special tokens at the hub ids, 151,657 entries, text encoded as by the tiny tokenizer."""
    from rewardmap_jax.data.tokenizer import load_tokenizer, special_token_ids
    from rewardmap_jax.data.tokenizer_build import build_qwen_id_tokenizer

    tok = load_tokenizer(build_qwen_id_tokenizer(tmp_path / "qwen_ids"))
    ids = special_token_ids(tok)
    assert (ids.endoftext, ids.im_start, ids.im_end) == (151643, 151644, 151645)
    assert (ids.vision_start, ids.vision_end, ids.image_pad, ids.video_pad) == (
        151652, 151653, 151655, 151656)
    assert len(tok) == 151657
    text = "According to the subway map, is it true that A Station is on the Red Line?"
    assert tok(text)["input_ids"] == load_tokenizer("tiny")(text)["input_ids"]
    assert tok.decode([1500]) == "<filler_1500>"
