"""KVCache pytree: init shapes, slot writes, group repeat."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rewardmap_jax.model import kv_cache as kvc
from rewardmap_jax.model.config import get_preset


def test_init_write_and_repeat():
    cfg = get_preset("tiny")
    cache = kvc.KVCache.init(cfg, batch=2, max_len=6)
    t = cfg.text
    assert len(cache.k) == t.num_hidden_layers
    assert cache.k[0].shape == (2, 6, t.num_key_value_heads, t.head_dim)
    assert cache.valid.shape == (2, 6) and int(cache.index) == 0
    new = jnp.arange(2 * 3 * t.num_key_value_heads * t.head_dim, dtype=jnp.float32).reshape(
        2, 3, t.num_key_value_heads, t.head_dim)
    k0 = kvc.write(cache.k[0], new, jnp.int32(2))
    np.testing.assert_array_equal(np.asarray(k0[:, 2:5]), np.asarray(new))
    assert not np.asarray(k0[:, :2]).any() and not np.asarray(k0[:, 5:]).any()
    valid = kvc.write(cache.valid, jnp.array([[True, False, True], [True, True, True]]),
                      jnp.int32(1))
    cache = cache.replace(k=(k0, *cache.k[1:]), valid=valid, index=jnp.int32(4))
    rep = cache.repeat(3)
    assert rep.k[0].shape[0] == 6 and int(rep.index) == 4
    np.testing.assert_array_equal(np.asarray(rep.k[0][3]), np.asarray(k0[1]))
    np.testing.assert_array_equal(np.asarray(rep.valid),
                                  np.repeat(np.asarray(valid), 3, axis=0))
    # a pytree: flows through jit
    out = jax.jit(lambda c: c.replace(index=c.index + 1))(rep)
    assert int(out.index) == 5
