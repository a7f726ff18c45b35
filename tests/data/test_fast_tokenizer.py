"""The worker-side tokenizer equals transformers' tokenizer on the same directory."""

from __future__ import annotations

import numpy as np
import pytest

from rewardmap_jax.data import prompts
from rewardmap_jax.data.fast_tokenizer import FastTokenizer
from rewardmap_jax.data.tokenizer import load_tokenizer, special_token_ids
from rewardmap_jax.mapworld.generator import make_record
from rewardmap_jax.mapworld.records import TASK_TYPES


@pytest.fixture(scope="module")
def pair():
    return FastTokenizer("tiny"), load_tokenizer("tiny")


def test_special_ids_and_text_encoding_match(pair):
    fast, hf = pair
    assert special_token_ids(fast) == special_token_ids(hf)
    assert (fast.pad_token_id, fast.eos_token_id) == (hf.pad_token_id, hf.eos_token_id)
    text = "Route Name: Red Line\n<|im_end|>\nZürich 北京 \\boxed{12}  x"
    assert fast(text)["input_ids"] == hf(text, add_special_tokens=False)["input_ids"]
    assert fast.decode(fast(text)["input_ids"]) == text


@pytest.mark.parametrize("task", TASK_TYPES)
def test_prompts_match_transformers(pair, task):
    fast, hf = pair
    rec = make_record("tiny", "train", 5, task)
    grid = np.array([1, 6, 6])
    a = prompts.encode_prompt(fast, rec, grid, special_token_ids(fast))
    b = prompts.encode_prompt(hf, rec, grid, special_token_ids(hf))
    assert a.tolist() == b.tolist()
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "a"}]},
            {"role": "assistant", "content": "b"}]
    for gen in (False, True):
        assert fast.apply_chat_template(msgs, add_generation_prompt=gen) == \
            hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
