"""M-RoPE position ids: spec worked examples, transformers parity (images), video rule, decode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rewardmap_jax.model import rope_index
from rewardmap_jax.model.config import from_hf_config
from tests.model import hf_reference as ref

CFG = from_hf_config(ref.hf_config(tie=False).to_dict())
T = 7  # any text token


def test_spec_worked_example_single_image():
    ids = np.array([[T, T, T, ref.VS] + [ref.IMG] * 15 + [ref.VE, T, T, T]])
    pos, delta = rope_index.get_rope_index(ids, CFG, image_grid_thw=[[1, 6, 10]])
    np.testing.assert_array_equal(pos[0, 0], [0, 1, 2, 3] + [4] * 15 + [9, 10, 11, 12])
    np.testing.assert_array_equal(pos[1, 0], [0, 1, 2, 3] + [4] * 5 + [5] * 5 + [6] * 5
                                  + [9, 10, 11, 12])
    np.testing.assert_array_equal(pos[2, 0], [0, 1, 2, 3] + [4, 5, 6, 7, 8] * 3
                                  + [9, 10, 11, 12])
    np.testing.assert_array_equal(delta, [13 - 23])


def test_text_only_left_padded():
    ids = np.full((2, 5), T)
    mask = np.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    pos, delta = rope_index.get_rope_index(ids, CFG, mask)
    np.testing.assert_array_equal(pos[:, 1], [[1, 1, 0, 1, 2]] * 3)
    np.testing.assert_array_equal(pos[:, 0], [[0, 1, 2, 3, 4]] * 3)
    np.testing.assert_array_equal(delta, [0, -2])


def test_matches_transformers_on_left_padded_multi_image_batch():
    grids = np.array([[1, 6, 10], [1, 8, 8], [1, 4, 6]])
    ids, mask = ref.left_padded_batch(grids, [[0, 1], [2], []])
    pos, delta = rope_index.get_rope_index(ids, CFG, mask, image_grid_thw=grids)
    hf = ref.hf_model(tie=False)
    want, want_delta = hf.model.get_rope_index(
        torch.tensor(ids), mm_token_type_ids=torch.tensor((ids == ref.IMG).astype(np.int64)),
        image_grid_thw=torch.tensor(grids), attention_mask=torch.tensor(mask))
    m = mask.astype(bool)
    np.testing.assert_array_equal(pos[:, m], want.numpy()[:, m])
    assert (pos[:, ~m] == 1).all()  # 4.x pad fill
    # 5.x measures the delta against the unpadded length, 4.x against the padded one
    np.testing.assert_array_equal(delta, want_delta.numpy().ravel() - (~m).sum(1))


@pytest.mark.parametrize("spg,t_steps", [(1.0, [0, 2, 4, 6]), (0.5, [0, 1, 2, 3])])
def test_video_temporal_positions(spg, t_steps):
    # grid 4x4x4 -> 4 temporal steps of 2x2 merged tokens; tokens_per_second 2
    ids = np.array([[T, ref.VS] + [ref.VID] * 16 + [ref.VE, T, T]])
    pos, delta = rope_index.get_rope_index(ids, CFG, video_grid_thw=[[4, 4, 4]],
                                           second_per_grid_ts=[spg])
    s = 2
    np.testing.assert_array_equal(pos[0, 0, 2:18], s + np.repeat(t_steps, 4))
    np.testing.assert_array_equal(pos[1, 0, 2:18], s + np.tile([0, 0, 1, 1], 4))
    np.testing.assert_array_equal(pos[2, 0, 2:18], s + np.tile([0, 1, 0, 1], 4))
    after = max(s + t_steps[-1], s + 1) + 1
    np.testing.assert_array_equal(pos[:, 0, 18:], [[after, after + 1, after + 2]] * 3)
    assert delta[0] == after + 3 - ids.shape[1]


def test_mixed_image_then_video_order():
    ids = np.array([[T, ref.VS, ref.IMG, ref.VE, ref.VS] + [ref.VID] * 2 + [ref.VE]])
    pos, _ = rope_index.get_rope_index(ids, CFG, image_grid_thw=[[1, 2, 2]],
                                       video_grid_thw=[[2, 2, 2]])
    np.testing.assert_array_equal(pos[0, 0], [0, 1, 2, 3, 4, 5, 7, 8])
    np.testing.assert_array_equal(pos[1:, 0], [[0, 1, 2, 3, 4, 5, 5, 8]] * 2)


def test_token_count_mismatch_is_reported():
    ids = np.array([[T, ref.VS] + [ref.IMG] * 3 + [ref.VE]])
    with pytest.raises(ValueError, match="3 image pad tokens"):
        rope_index.get_rope_index(ids, CFG, image_grid_thw=[[1, 4, 4]])
    with pytest.raises(ValueError, match="input_ids must be"):
        rope_index.get_rope_index(ids[0], CFG)


def test_decode_positions_continue_the_prompt():
    grids = np.array([[1, 6, 10], [1, 4, 6]])
    ids, mask = ref.left_padded_batch(grids, [[0], [1]])
    full_ids = np.concatenate([ids, np.full((2, 3), T)], axis=1)
    full_mask = np.concatenate([mask, np.ones((2, 3), int)], axis=1)
    full_pos, _ = rope_index.get_rope_index(full_ids, CFG, full_mask, image_grid_thw=grids)
    _, delta = rope_index.get_rope_index(ids, CFG, mask, image_grid_thw=grids)
    got = np.asarray(rope_index.decode_positions(ids.shape[1], delta, 3))
    np.testing.assert_array_equal(got, full_pos[:, :, ids.shape[1]:])
