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


def test_inverse_cdf_never_returns_a_zero_mass_token():
    """Whole blocks, block edges and the vocabulary's ends masked; uniforms at 0, at the largest
    float below 1 and on every cumulative boundary: the draw stays on positive mass."""
    vocab = 300  # blocks of 32 (ceil sqrt), the last one partial
    rs = np.random.RandomState(0)
    x = rs.randn(vocab).astype(np.float32)
    masked = np.zeros(vocab, bool)
    masked[:5] = masked[-7:] = True  # the first and the last entries
    masked[64:96] = True  # a whole block
    masked[31:33] = masked[127:129] = True  # block edges
    x[masked] = -np.inf
    probs = np.where(masked, 0.0, np.exp(x - x[~masked].max()))
    probs /= probs.sum()
    bounds = np.cumsum(probs).astype(np.float32)
    u = np.concatenate([[0.0, np.nextafter(np.float32(1), np.float32(0))], bounds[:-1],
                        np.nextafter(bounds[:-1], np.float32(0)), rs.rand(200)]).astype(np.float32)
    logits = jnp.broadcast_to(jnp.asarray(x), (u.size, vocab))
    tok, logp = jax.jit(sampling.inverse_cdf)(jnp.asarray(u), logits)
    tok = np.asarray(tok)
    assert not masked[tok].any()
    assert tok[0] == np.flatnonzero(~masked)[0] and tok[1] == np.flatnonzero(~masked)[-1]
    np.testing.assert_allclose(np.asarray(logp), np.log(probs[tok]), atol=1e-5)


def test_inverse_cdf_large_vocabulary_matches_target():
    """V = 5,000 (70 blocks): a peaked head and a long tail; counts of the 15 top tokens and
    of the tail, chi-square."""
    vocab = 5000
    rs = np.random.RandomState(1)
    x = np.log(rs.dirichlet(np.full(vocab, 0.05))).astype(np.float32)
    x = np.maximum(x, -60.0)
    p = np.exp(x.astype(np.float64) - x.max())
    p /= p.sum()
    u = jax.random.uniform(jax.random.key(4), (N_DRAWS,))
    tok, _ = jax.jit(sampling.inverse_cdf)(u, jnp.broadcast_to(jnp.asarray(x), (N_DRAWS, vocab)))
    top = np.argsort(-p)[:15]
    counts = np.bincount(np.asarray(tok), minlength=vocab)
    observed = np.append(counts[top], N_DRAWS - counts[top].sum())
    expected = np.append(p[top] * N_DRAWS, N_DRAWS - (p[top] * N_DRAWS).sum())
    assert stats.chisquare(observed, expected).pvalue > 1e-3, (observed, expected)


@pytest.mark.parametrize("greedy,truncate,sorts", [(True, False, 0), (False, False, 0),
                                                   (False, True, 1)])
def test_sampling_class_decides_the_sort_when_the_program_is_built(greedy, truncate, sorts):
    cls = sampling.SamplingClass(greedy=greedy, truncate=truncate)
    mask = sampling.forbidden_mask(LOGITS.size, (1,))
    fn = jax.jit(lambda u, x, t, k, p: sampling.draw(u, x, t, k, p, mask, cls))
    text = fn.lower(jnp.zeros((4,)), jnp.zeros((4, LOGITS.size)), 1.0, 0, 1.0).as_text()
    assert text.count("stablehlo.sort") == sorts
    assert ("stablehlo.case" in text) is False  # no run-time branch on the settings either
    assert sampling.SamplingClass.of(0.0, 5, 0.5) == sampling.SamplingClass(True, False)
    assert sampling.SamplingClass.of(0.7, 0, 1.0) == sampling.SamplingClass(False, False)
    assert sampling.SamplingClass.of(0.7, 0, 0.9) == sampling.SamplingClass(False, True)


def test_draw_by_class_equals_the_run_time_choice():
    """`draw` with the static class gives what `sample_tokens` (settings traced) gives."""
    logits = jax.random.normal(jax.random.key(3), (64, 40)) * 2
    mask = sampling.forbidden_mask(40, (2, 5))
    key = jax.random.key(9)
    u = jax.random.uniform(key, (64,))
    for t, k, p in ((0.0, 0, 1.0), (0.8, 0, 1.0), (1.2, 7, 0.8)):
        cls = sampling.SamplingClass.of(t, k, p)
        got = sampling.draw(None if cls.greedy else u, logits, t, k, p, mask, cls)
        want = sampling.sample_tokens(key, logits, t, k, p, mask)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
