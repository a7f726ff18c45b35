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
    assert cache.k[0].shape == (2, t.num_key_value_heads, 6, t.head_dim)  # head-major
    assert cache.valid.shape == (2, 6) and int(cache.index) == 0
    new = jnp.arange(2 * 3 * t.num_key_value_heads * t.head_dim, dtype=jnp.float32).reshape(
        2, 3, t.num_key_value_heads, t.head_dim)
    k0 = kvc.write_kv(cache.k[0], new, jnp.int32(2))
    np.testing.assert_array_equal(np.asarray(k0[:, :, 2:5]), np.asarray(new).transpose(0, 2, 1, 3))
    assert not np.asarray(k0[:, :, :2]).any() and not np.asarray(k0[:, :, 5:]).any()
    np.testing.assert_array_equal(kvc.slot_major(k0)[:, 2:5], new)
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


def test_take_and_put_rows_and_slots():
    """A compacted decode state: rows (or prompts with their G samples) and leading slots out,
    and back in place; the shared prefix is only read."""
    cfg = get_preset("tiny")
    cache = kvc.KVCache.init(cfg, batch=4, max_len=6)
    fill = lambda x: jnp.arange(x.size, dtype=jnp.float32).reshape(x.shape)  # noqa: E731
    cache = cache.replace(k=tuple(map(fill, cache.k)), v=tuple(map(fill, cache.v)),
                          valid=cache.valid.at[:, :3].set(True), index=jnp.int32(3))
    rows = jnp.array([3, 1], jnp.int32)
    sub = cache.take(rows, 4)
    heads, head_dim = cache.k[0].shape[1], cache.k[0].shape[3]
    assert sub.k[0].shape == (2, heads, 4, head_dim) and int(sub.index) == 3
    np.testing.assert_array_equal(sub.k[1], cache.k[1][np.array([3, 1]), :, :4])
    np.testing.assert_array_equal(sub.valid, cache.valid[np.array([3, 1]), :4])
    sub = sub.replace(k=tuple(x + 1 for x in sub.k), index=jnp.int32(4))
    back = cache.put(sub, rows)
    np.testing.assert_array_equal(back.k[0][np.array([3, 1]), :, :4], sub.k[0])
    np.testing.assert_array_equal(back.k[0][np.array([0, 2])], cache.k[0][np.array([0, 2])])
    np.testing.assert_array_equal(back.k[0][:, :, 4:], cache.k[0][:, :, 4:])
    assert int(back.index) == 4
    shared = kvc.SharedKVCache.share(cache, num_generations=3, max_len=5)
    shared = shared.replace(suffix=shared.suffix.replace(
        k=tuple(map(fill, shared.suffix.k)), index=jnp.int32(2)))
    prompts = jnp.array([2], jnp.int32)
    part = shared.take(prompts, 3)
    assert part.prefix.k[0].shape[0] == 1 and part.suffix.k[0].shape == (3, heads, 3, head_dim)
    np.testing.assert_array_equal(part.prefix.k[0][0], shared.prefix.k[0][2])
    np.testing.assert_array_equal(part.suffix.k[0], shared.suffix.k[0][6:9, :, :3])
    part = part.replace(suffix=part.suffix.replace(k=tuple(-x for x in part.suffix.k)))
    back = shared.put(part, prompts)
    np.testing.assert_array_equal(back.suffix.k[0][6:9, :, :3], -shared.suffix.k[0][6:9, :, :3])
    np.testing.assert_array_equal(back.suffix.k[0][6:9, :, 3:], shared.suffix.k[0][6:9, :, 3:])
    np.testing.assert_array_equal(back.suffix.k[0][:6], shared.suffix.k[0][:6])
    np.testing.assert_array_equal(back.prefix.k[0], shared.prefix.k[0])
