"""Sampling-distribution transforms (rewardmap_jax/rl/sampling.py) against exact targets."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from rewardmap_jax.rl import sampling

LOGITS = np.log(np.array([0.30, 0.22, 0.16, 0.12, 0.09, 0.06, 0.03, 0.02])) + 0.7
N_DRAWS = 40_000


def target_probs(logits, temperature=1.0, top_k=0, top_p=1.0, forbidden=()):
    """Independent numpy reference: mask, temperature, keep top-k, then the top-p prefix."""
    x = np.array(logits, np.float64)
    x[list(forbidden)] = -np.inf
    p = np.exp((x - x.max()) / temperature)
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    keep = np.zeros_like(p, bool)
    if top_k > 0:
        keep[order[:top_k]] = True
    else:
        keep[:] = True
    p = np.where(keep, p, 0.0)
    p /= p.sum()
    mass, kept = 0.0, np.zeros_like(keep)
    for i in order:
        if mass >= top_p or p[i] == 0:
            break
        kept[i] = True
        mass += p[i]
    p = np.where(kept, p, 0.0)
    return p / p.sum()


_draw = jax.jit(
    lambda key, logits, t, k, p, forbidden: sampling.sample_tokens(key, logits, t, k, p, forbidden)
)


def draw(temperature=1.0, top_k=0, top_p=1.0, forbidden=(), seed=0):
    logits = jnp.broadcast_to(jnp.asarray(LOGITS, jnp.float32), (N_DRAWS, LOGITS.size))
    mask = sampling.forbidden_mask(LOGITS.size, tuple(forbidden))
    return _draw(jax.random.key(seed), logits, temperature, top_k, top_p, mask)


@pytest.mark.parametrize(
    "temperature,top_k,top_p,forbidden",
    [
        (1.0, 0, 1.0, ()),
        (0.6, 0, 1.0, ()),
        (1.7, 0, 1.0, ()),
        (1.0, 3, 1.0, ()),
        (1.0, 0, 0.7, ()),
        (0.8, 5, 0.85, (0,)),
        (1.3, 0, 0.9, (1, 4)),
    ],
)
def test_empirical_distribution_matches_target(temperature, top_k, top_p, forbidden):
    tokens, logp_s, logp_p = draw(temperature, top_k, top_p, forbidden)
    target = target_probs(LOGITS, temperature, top_k, top_p, forbidden)
    counts = np.bincount(np.asarray(tokens), minlength=LOGITS.size)
    # Nothing outside the support, and the support's counts fit the target (chi-square).
    assert counts[target == 0].sum() == 0
    support = target > 0
    chi = stats.chisquare(counts[support], N_DRAWS * target[support])
    assert chi.pvalue > 1e-3, (counts, N_DRAWS * target)
    # The same counts are rejected against the plain softmax whenever the transform changes it,
    # so the test has power.
    plain = target_probs(LOGITS)
    if np.abs(plain - target).max() > 0.02:
        with np.errstate(divide="ignore"):
            bad = stats.chisquare(counts, N_DRAWS * plain).pvalue
        assert bad < 1e-6
    # Returned log-probs are exact: sampling distribution and raw policy.
    tok = np.asarray(tokens)
    np.testing.assert_allclose(np.asarray(logp_s), np.log(target[tok]), atol=1e-5)
    raw = LOGITS - np.log(np.exp(LOGITS).sum())
    np.testing.assert_allclose(np.asarray(logp_p), raw[tok], atol=1e-5)


def test_truncation_hand_worked():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    finite = lambda x: np.isfinite(np.asarray(x[0]))
    np.testing.assert_array_equal(finite(sampling.sampling_logits(logits, 1.0, 0, 0.75)),
                                  [True, True, False, False])
    np.testing.assert_array_equal(finite(sampling.sampling_logits(logits, 1.0, 0, 0.81)),
                                  [True, True, True, False])
    np.testing.assert_array_equal(finite(sampling.sampling_logits(logits, 1.0, 3, 1.0)),
                                  [True, True, True, False])
    np.testing.assert_array_equal(finite(sampling.sampling_logits(logits, 1.0, 1, 1.0)),
                                  [True, False, False, False])
    # top_p smaller than the first token's mass still keeps the first token.
    np.testing.assert_array_equal(finite(sampling.sampling_logits(logits, 1.0, 0, 0.1)),
                                  [True, False, False, False])
    # temperature divides the surviving logits.
    np.testing.assert_allclose(sampling.sampling_logits(logits, 2.0, 0, 1.0), logits / 2.0)


def test_greedy_is_argmax_with_zero_sampling_logp():
    logits = jax.random.normal(jax.random.key(1), (16, 50))
    mask = sampling.forbidden_mask(50, ())
    tok, lp_s, lp_p = sampling.sample_tokens(jax.random.key(2), logits, 0.0, 0, 1.0, mask)
    np.testing.assert_array_equal(tok, jnp.argmax(logits, -1))
    np.testing.assert_array_equal(lp_s, 0.0)
    np.testing.assert_allclose(lp_p, jnp.max(jax.nn.log_softmax(logits), -1), atol=1e-6)


def test_forbidden_tokens_never_drawn_even_when_preferred():
    logits = jnp.zeros((4096, 12)).at[:, 7].set(50.0).at[:, 9].set(49.0)
    mask = sampling.forbidden_mask(12, (7, 9))
    for t in (0.0, 1.0, 5.0):
        tok, _, _ = sampling.sample_tokens(jax.random.key(3), logits, t, 0, 1.0, mask)
        assert not np.isin(np.asarray(tok), [7, 9]).any()


def test_same_key_same_draws_other_key_differs():
    a = draw(seed=5)[0]
    b = draw(seed=5)[0]
    c = draw(seed=6)[0]
    np.testing.assert_array_equal(a, b)
    assert (np.asarray(a) != np.asarray(c)).mean() > 0.5


def test_forbidden_mask_rejects_out_of_vocab_ids():
    with pytest.raises(ValueError, match="outside the vocabulary"):
        sampling.forbidden_mask(10, (3, 10))
