"""SFT cross-entropy on answer tokens only."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rewardmap_jax.rl import sft


def _batch():
    logps = jnp.log(jnp.array([[0.5, 0.25, 0.1], [0.2, 0.5, 0.9]]))
    mask = jnp.array([[0, 1, 1], [1, 0, 0]])  # prompt token 0 of row 0 and padding excluded
    return logps, mask


@pytest.mark.parametrize(
    "mode,expected",
    [
        # three answer tokens: (ln 4 + ln 10 + ln 5) / 3
        ("token-mean", (math.log(4) + math.log(10) + math.log(5)) / 3),
        # row means (ln 4 + ln 10) / 2 and ln 5, averaged
        ("seq-mean-token-mean", ((math.log(4) + math.log(10)) / 2 + math.log(5)) / 2),
        # row sums over T = 3, averaged over 2 rows
        ("seq-sum-token-mean", (math.log(4) + math.log(10) + math.log(5)) / 3 / 2),
    ],
)
def test_sft_loss_hand_values(mode, expected):
    logps, mask = _batch()
    loss, m = sft.sft_loss(logps, mask, loss_agg=mode)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    tok = (math.log(4) + math.log(10) + math.log(5)) / 3
    assert float(m["nll"]) == pytest.approx(tok, rel=1e-6)
    assert float(m["ppl"]) == pytest.approx(math.exp(tok), rel=1e-6)
    assert float(m["tokens"]) == 3


def test_sft_from_hidden_only_answer_tokens_get_gradient():
    rng = np.random.default_rng(0)
    b, length, d, v = 2, 6, 4, 9
    hidden = jnp.asarray(rng.normal(size=(b, length, d)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(d, v)), jnp.float32)
    ids = jnp.asarray(rng.integers(0, v, (b, length)))
    mask = jnp.asarray([[0, 0, 0, 1, 1, 0], [0, 0, 1, 1, 1, 1]])
    loss, _ = sft.sft_loss_from_hidden(hidden, ids, mask, lambda h: h @ w, chunk_size=2)
    logits = np.asarray(hidden @ w, np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    # position t-1 predicts ids[t]; answer tokens are where mask[t] == 1
    nll = [-logp[i, t - 1, int(ids[i, t])] for i in range(b) for t in range(1, length)
           if mask[i, t]]
    assert float(loss) == pytest.approx(np.mean(nll), rel=1e-5)
    g = jax.grad(lambda h: sft.sft_loss_from_hidden(h, ids, mask, lambda x: x @ w)[0])(hidden)
    # hidden positions that predict no answer token get no gradient
    predicts = np.zeros((b, length), bool)
    predicts[:, :-1] = np.asarray(mask[:, 1:]) == 1
    assert np.all(np.asarray(g)[~predicts] == 0) and np.all(np.abs(np.asarray(g)[predicts]) > 0)


def test_sft_shape_error():
    with pytest.raises(ValueError, match="must match"):
        sft.sft_loss(jnp.zeros((2, 3)), jnp.zeros((2, 4)))
