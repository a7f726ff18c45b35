"""Prompt construction: official RL prompt, placeholder expansion, targets, padding/truncation."""

from __future__ import annotations

import numpy as np
import pytest

from rewardmap_jax.data import prompts
from rewardmap_jax.data.tokenizer import load_tokenizer, special_token_ids
from rewardmap_jax.mapworld.records import Record


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


@pytest.fixture(scope="module")
def special(tok):
    return special_token_ids(tok)


def _record(**kw):
    base = dict(uid="u1", type="Counting3", question="How many lines are there in the map?",
                answer=3, figure=None, metro={"Red Line": ["A", "B"]})
    base.update(kw)
    return Record(**base)


def test_prompt_text_is_the_official_rl_prompt(tok):
    text = prompts.render_prompt(tok, _record())
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>\n"
        "How many lines are there in the map?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_expansion_equals_text_replacement(tok, special):
    rec = _record()
    grid = np.array([1, 6, 8])  # 48 patches -> 12 tokens
    ids = prompts.encode_prompt(tok, rec, grid, special)
    # HF processor semantics: replace the text placeholder, then tokenize
    text = prompts.render_prompt(tok, rec).replace("<|image_pad|>", "<|image_pad|>" * 12)
    want = tok(text, add_special_tokens=False)["input_ids"]
    assert ids.dtype == np.int32 and ids.tolist() == want
    assert int((ids == special.image_pad).sum()) == 12
    start = int(np.flatnonzero(ids == special.vision_start)[0])
    assert ids[start + 13] == special.vision_end
    assert tok.decode(ids[-3:]) == "<|im_start|>assistant\n"  # role names are single tokens
    with pytest.raises(ValueError, match="placeholders"):
        prompts.expand_image_pads(ids[:5], special.image_pad, [4])


@pytest.mark.parametrize(
    "kw, want",
    [
        (dict(type="TorF1", answer=1), r"\boxed{yes}"),
        (dict(type="TorF2", answer=0), r"\boxed{no}"),
        (dict(type="Counting1", answer=2), r"\boxed{C}"),
        (dict(type="Counting2", answer=4), r"\boxed{4}"),
        (dict(type="Counting3", answer=11), r"\boxed{11}"),
    ],
)
def test_vqa_targets(tok, special, kw, want):
    rec = _record(**kw)
    assert prompts.target_text(rec) == want
    ids = prompts.encode_target(tok, rec, special)
    assert ids[-1] == special.eos and tok.decode(ids[:-1]) == want


def _section(line, a, b, via):
    return {"route_name": line, "departure_stop": a, "arrival_stop": b, "via_stops": via,
            "num_via_stops": len(via)}


@pytest.mark.parametrize(
    "template, want",
    [
        ("short", "Route Name: Red Line\nDeparture Stop: A\nArrival Stop: C\n--\n"
                  "Route Name: Blue Line\nDeparture Stop: C\nArrival Stop: E"),
        ("long_num_via", "Route Name: Red Line\nDeparture Stop: A\nArrival Stop: C\n"
                         "Number of Via Stops: 1\n--\nRoute Name: Blue Line\nDeparture Stop: C\n"
                         "Arrival Stop: E\nNumber of Via Stops: 0"),
        ("long_via", "Route Name: Red Line\nDeparture Stop: A\nArrival Stop: C\nVia Stops: B\n--\n"
                     "Route Name: Blue Line\nDeparture Stop: C\nArrival Stop: E\nVia Stops: "),
    ],
)
def test_planning_target_is_first_reference_route(template, want):
    routes = {
        "plan_1": [_section("Red Line", "A", "C", ["B"]), _section("Blue Line", "C", "E", [])],
        "plan_2": [_section("Green Line", "A", "E", ["X", "Y"])],
    }
    rec = _record(type="planning", answer=None, routes=routes, template=template)
    assert prompts.target_text(rec) == want


def test_left_pad_and_buckets():
    ids, mask = prompts.left_pad([np.array([5, 6, 7]), np.array([9])], 5, pad_id=0)
    assert ids.tolist() == [[0, 0, 5, 6, 7], [0, 0, 0, 0, 9]]
    assert mask.tolist() == [[0, 0, 1, 1, 1], [0, 0, 0, 0, 1]]
    ids, mask = prompts.right_pad([np.array([5, 6])], 4, pad_id=1)
    assert ids.tolist() == [[5, 6, 1, 1]] and mask.tolist() == [[1, 1, 0, 0]]
    assert prompts.pick_bucket(64, (128, 64)) == 64
    assert prompts.pick_bucket(65, (64, 128)) == 128
    with pytest.raises(ValueError, match="largest bucket"):
        prompts.pick_bucket(129, (64, 128))


def test_truncation_never_cuts_image_tokens(tok, special):
    ids = prompts.encode_prompt(tok, _record(), np.array([1, 6, 6]), special)
    n = len(ids)
    assert prompts.fit_prompt(ids, n, special) is ids
    with pytest.raises(prompts.PromptTooLongError, match="record u1: prompt has"):
        prompts.fit_prompt(ids, n - 1, special, uid="u1")
    first_vision = int(np.flatnonzero(np.isin(ids, special.vision))[0])
    kept = prompts.fit_prompt(ids, n - first_vision, special, mode="left")
    assert kept.tolist() == ids[first_vision:].tolist()
    with pytest.raises(prompts.PromptTooLongError, match="would cut image tokens"):
        prompts.fit_prompt(ids, n - first_vision - 1, special, mode="left")
