"""Masked attention that is memory-linear in the key length.

Queries are processed in chunks of `chunk` (a `lax.map` over chunks, the body under
`jax.checkpoint`), so neither the forward nor the backward pass ever holds more than
(B, heads, chunk, S) logits: no (S, S) array exists for long prompts or 16k-patch images.
Each chunk calls `jax.nn.dot_product_attention` (implementation "xla" or "cudnn").

`attend_shared_prefix` is the group-shared ("cascade") variant used to decode G samples per
prompt: B*G query rows attend over a B-row prompt prefix (read once per prompt, never copied G
times) plus their own keys, under one softmax over both parts. `attend_decode` is the
single-query (decode step) form of both, reading the head-major cache as it lies.

`attend_prompt_groups` is the training-side counterpart: one row `[prompt | c_1 | ... | c_G]`
per prompt, where completion c_g sees the prompt and (causally) itself, never c_h. It is
`attend` with a shared segment (the prompt's keys are visible from every segment), split so
that prompt queries read only prompt keys.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _mask(q_seg, kv_seg, q_pos, kv_pos, shared_seg=None):
    """(B, 1, T, S) bool: key segment >= 0, same segment as the query (or the key is in
    `shared_seg`, visible from every segment), and key pos <= query pos if causal."""
    same = q_seg[:, :, None] == kv_seg[:, None, :]
    if shared_seg is not None:
        same = same | (kv_seg == shared_seg)[:, None, :]
    m = same & (kv_seg >= 0)[:, None, :]
    if q_pos is not None:
        m = m & (kv_pos[:, None, :] <= q_pos[:, :, None])
    return m[:, None]


def _attend_dense(q, k, v, q_seg, kv_seg, q_pos, kv_pos, impl, shared_seg=None):
    mask = _mask(q_seg, kv_seg, q_pos, kv_pos, shared_seg)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=impl)


def attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_seg: jax.Array,
    kv_seg: jax.Array,
    q_pos: jax.Array | None = None,
    kv_pos: jax.Array | None = None,
    *,
    impl: str = "xla",
    chunk: int = 512,
    reach: int = 0,
    shared_seg: int | None = None,
) -> jax.Array:
    """Segment-masked (optionally causal) attention, scale head_dim^-0.5, fp32 softmax.

    Args:
      q: (B, T, N, H); k, v: (B, S, K, H) with N % K == 0 (GQA handled natively).
      q_seg: (B, T) int32; kv_seg: (B, S) int32. A query attends to keys of its own segment;
        keys with a negative segment id are never attended (padding). A query with no visible
        key gets a finite, meaningless output (callers ignore those rows).
      q_pos, kv_pos: (B, T), (B, S) int32 slot indices; if given, keys with kv_pos > q_pos are
        masked (causal).
      impl: "xla" or "cudnn" (`jax.nn.dot_product_attention` implementation; cudnn falls back
        to xla for fp32 inputs).
      chunk: query-chunk length.
      reach: 0, or a bound such that every key a query can see lies within `reach` slots of it
        (segments are contiguous runs no longer than `reach`, as in a packed vision buffer;
        requires T == S, non-causal). Each query chunk then reads only its
        `chunk + 2 * reach` neighbouring keys: work sum(P) * (chunk + 2 reach) instead of
        sum(P)^2 for many images in one buffer. The result is the same as with reach = 0.
      shared_seg: None, or a segment id whose keys every query sees (whatever its own
        segment; still subject to the causal rule): a prompt shared by several completions.
    Returns:
      (B, T, N, H) in q.dtype.
    """
    if impl == "cudnn" and q.dtype not in (jnp.bfloat16, jnp.float16):
        impl = "xla"  # cuDNN flash attention has no fp32 kernel (fp32 runs are parity runs)
    causal = q_pos is not None
    t, s = q.shape[1], k.shape[1]
    if reach and not causal and t == s and t > chunk and chunk + 2 * reach < s:
        if shared_seg is not None:
            raise ValueError("attend: reach and shared_seg do not combine")
        return _attend_key_windows(q, k, v, q_seg, kv_seg, chunk, reach, impl)
    if not causal:
        q_pos = jnp.zeros(q_seg.shape, jnp.int32)  # placeholder, unused below

    def dense(qc, sc, pc):
        return _attend_dense(qc, k, v, sc, kv_seg, pc if causal else None, kv_pos, impl,
                             shared_seg)

    return _map_query_chunks(dense, chunk, q, (q_seg, -2), (q_pos, 0))


def attend_prompt_groups(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_seg: jax.Array,
    kv_seg: jax.Array,
    prompt_len: int,
    *,
    impl: str = "xla",
    chunk: int = 512,
) -> jax.Array:
    """Causal attention over rows `[prompt | c_1 | ... | c_G]` (one row per prompt).

    Slot i sees slot j iff j <= i, kv_seg[j] >= 0 and (kv_seg[j] == 0 or kv_seg[j] ==
    q_seg[i]): the prompt (segment 0, slots [0, prompt_len)) is visible from every completion,
    a completion (segment g + 1) only from itself. Exactly `attend(q, k, v, q_seg, kv_seg,
    idx, idx, shared_seg=0)` with idx the slot index; computed in two parts because no prompt
    query can see a completion key (they all come later): prompt queries over the prompt's
    keys (prompt_len^2 pairs), completion queries over all keys (G T (prompt_len + G T)
    pairs), instead of (prompt_len + G T)^2.

    Args:
      q: (B, S, N, H); k, v: (B, S, K, H), S = prompt_len + G * T.
      q_seg: (B, S) int32: 0 on the prompt, g + 1 on completion g (padding included, so a
        pad query sees what it sees in a `[prompt | completion]` row).
      kv_seg: (B, S) int32: q_seg with padding negative (never attended: the prompt's left
        padding and the completions' right padding).
      prompt_len: static.
    Returns:
      (B, S, N, H) in q.dtype.
    """
    b, s = kv_seg.shape
    if (not 0 < prompt_len <= s or q.shape[:2] != (b, s) or k.shape[:2] != (b, s)
            or q_seg.shape != (b, s)):
        raise ValueError(f"attend_prompt_groups: q {q.shape}, k {k.shape}, q_seg {q_seg.shape}, "
                         f"kv_seg {kv_seg.shape} and prompt_len {prompt_len} do not describe "
                         "one layout")
    idx = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
    kw = dict(impl=impl, chunk=chunk, shared_seg=0)
    p = slice(0, prompt_len)
    out_p = attend(q[:, p], k[:, p], v[:, p], q_seg[:, p], kv_seg[:, p], idx[:, p], idx[:, p],
                   **kw)
    if prompt_len == s:
        return out_p
    c = slice(prompt_len, s)
    out_c = attend(q[:, c], k, v, q_seg[:, c], kv_seg, idx[:, c], idx, **kw)
    return jnp.concatenate([out_p, out_c], axis=1)


def _attend_key_windows(q, k, v, q_seg, kv_seg, chunk: int, reach: int, impl: str):
    """`attend` (non-causal) where query chunk [a, a + chunk) reads keys [a - reach,
    a + chunk + reach), shifted to stay inside [0, S): a fixed-size dynamic slice per chunk."""
    s = k.shape[1]
    wk = chunk + 2 * reach
    n = -(-q.shape[1] // chunk)
    starts = jnp.clip(jnp.arange(n, dtype=jnp.int32) * chunk - reach, 0, s - wk)

    def windowed(qc, sc, start):
        window = lambda x: jax.lax.dynamic_slice_in_dim(x, start, wk, axis=1)  # noqa: E731
        return _attend_dense(qc, window(k), window(v), sc, window(kv_seg), None, None, impl)

    return _map_query_chunks(windowed, chunk, q, (q_seg, -2), per_chunk=(starts,))


def _map_query_chunks(fn, chunk: int, q: jax.Array, *per_query: tuple[jax.Array, int],
                      per_chunk: tuple[jax.Array, ...] = ()):
    """fn(q, *per_query, *per_chunk) over query chunks of `chunk` (lax.map, body
    rematerialised).

    q (B, T, ...); per_query: (array (B, T, ...), pad fill) pairs split alongside q; per_chunk:
    arrays (n_chunks, ...) whose i-th entry goes with chunk i. Returns fn's (B, T, ...) output;
    a single call when T <= chunk.
    """
    b, t = q.shape[:2]
    arrays = [a for a, _ in per_query]
    if t <= chunk:
        return fn(q, *arrays, *(c[0] for c in per_chunk))
    n_chunks = -(-t // chunk)
    pad = n_chunks * chunk - t

    def split(x, fill):
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)
        return jnp.moveaxis(x.reshape(b, n_chunks, chunk, *x.shape[2:]), 1, 0)

    xs = (split(q, 0), *(split(a, fill) for a, fill in per_query), *per_chunk)
    out = jax.lax.map(jax.checkpoint(lambda args: fn(*args)), xs)  # (n_chunks, B, chunk, ...)
    out = jnp.moveaxis(out, 0, 1).reshape(b, n_chunks * chunk, *out.shape[3:])
    return out[:, :t]


def attend_shared_prefix(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    kv_seg: jax.Array,
    q_pos: jax.Array,
    kv_pos: jax.Array,
    prefix_k: jax.Array,
    prefix_v: jax.Array,
    prefix_valid: jax.Array,
    *,
    chunk: int = 512,
) -> jax.Array:
    """Causal attention of B*G query rows over a shared B-row prefix plus their own keys.

    Row r = b * G + g (prompt-major) sees every valid slot of prefix row b (the prefix precedes
    all of the row's own keys) and its own keys with kv_seg >= 0 and kv_pos <= q_pos. One
    softmax spans both parts, so the result equals `attend` over
    concat([repeat(prefix, G), own keys]) — without materialising the G copies: each prompt's
    keys are read once per step for its G samples. Logits and softmax in fp32, probabilities cast
    to the value dtype, as `jax.nn.dot_product_attention` ("xla") does.

    Args:
      q: (B*G, T, N, H); k, v: (B*G, S, K, H) the rows' own keys (N % K == 0).
      kv_seg: (B*G, S) int32, negative = never attended; q_pos (B*G, T), kv_pos (B*G, S) int32
        slot indices on one axis (causal mask among the rows' own keys).
      prefix_k, prefix_v: (B, P, K, H); prefix_valid: (B, P) bool.
      chunk: query-chunk length (memory O(chunk * (P + S)) per row).
    Returns:
      (B*G, T, N, H) in q.dtype.
    """
    n, _, nh, hd = q.shape
    b, p, nkv, _ = prefix_k.shape
    if n % b or nh % nkv or k.shape[0] != n or prefix_valid.shape != (b, p):
        raise ValueError(
            f"attend_shared_prefix: q {q.shape} rows must be a multiple of prefix rows "
            f"{prefix_k.shape}, own keys {k.shape} one row per query row, prefix_valid "
            f"{prefix_valid.shape} == {(b, p)}"
        )
    g, rep = n // b, nh // nkv
    f32 = jnp.promote_types(q.dtype, jnp.float32)
    scale = jnp.asarray(hd**-0.5, f32)
    neg = jnp.asarray(-0.7 * jnp.finfo(f32).max, f32)  # as jax.nn.dot_product_attention
    own_visible = kv_seg >= 0  # (n, S)

    def dense(qc, pc):
        tc = qc.shape[1]
        # Query head j reads kv head j // rep (HF repeat_kv and jax GQA order).
        qg = qc.reshape(b, g, tc, nkv, rep, hd)
        s_pre = jnp.einsum("bgtkrh,bpkh->bgtkrp", qg, prefix_k, preferred_element_type=f32)
        s_pre = jnp.where(prefix_valid[:, None, None, None, None, :], s_pre * scale, neg)
        s_own = jnp.einsum("ntkrh,nskh->ntkrs", qc.reshape(n, tc, nkv, rep, hd), k,
                           preferred_element_type=f32)
        m_own = own_visible[:, None, :] & (kv_pos[:, None, :] <= pc[:, :, None])  # (n, tc, S)
        s_own = jnp.where(m_own[:, :, None, None, :], s_own * scale, neg)
        probs = jax.nn.softmax(
            jnp.concatenate([s_pre.reshape(n, tc, nkv, rep, p), s_own], axis=-1), axis=-1)
        probs = probs.astype(v.dtype)
        p_pre = probs[..., :p].reshape(b, g, tc, nkv, rep, p)
        o = jnp.einsum("bgtkrp,bpkh->bgtkrh", p_pre, prefix_v, preferred_element_type=f32)
        o = o.reshape(n, tc, nkv, rep, hd) + jnp.einsum(
            "ntkrs,nskh->ntkrh", probs[..., p:], v, preferred_element_type=f32)
        return o.reshape(n, tc, nh, hd).astype(q.dtype)

    return _map_query_chunks(dense, chunk, q, (q_pos, 0))


def attend_decode(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    visible: jax.Array,
    prefix_k: jax.Array | None = None,
    prefix_v: jax.Array | None = None,
    prefix_valid: jax.Array | None = None,
) -> jax.Array:
    """One query per row over a head-major cache read as it lies (the decode step).

    Same result as `attend` (plain cache) or `attend_shared_prefix` (group-shared prefix) for a
    single query. The cache is head-major (`kv_cache.KVCache`), so per row and kv head the
    scores and the value sum are batched matrix-vector products over the slots with the
    operands in the [batch, free, contracting] / [batch, contracting, free] layouts a dot takes:
    nothing as large as the cache is copied. The G samples of a prompt read its prefix as one
    (G * R, H) x (H, P) product (their queries gathered, not its keys repeated).

    Args:
      q: (N, 1, NH, H) the step's queries (N = B*G rows with a prefix, else any N).
      k, v: (N, K, C, H) the rows' own cache slots, head-major (NH % K == 0).
      visible: (N, C) bool, the slots this query attends (written, not padding, <= its slot).
      prefix_k, prefix_v: (B, K, P, H) a prefix shared by the G = N / B rows of each prompt
        (row b * G + g reads prefix row b), prefix_valid (B, P) bool; or all None.
    Returns:
      (N, 1, NH, H) in q.dtype. Scores and softmax in fp32, probabilities cast to the value
      dtype before the value sum (accumulated in fp32), as `attend_shared_prefix`.
    """
    n, _, nh, hd = q.shape
    nkv = k.shape[1]
    rep = nh // nkv
    f32 = jnp.promote_types(q.dtype, jnp.float32)
    neg = jnp.asarray(-0.7 * jnp.finfo(f32).max, f32)
    scale = jnp.asarray(hd**-0.5, f32)
    # Query head j reads kv head j // rep (HF repeat_kv order).
    qr = q.reshape(n, nkv, rep, hd)
    s_own = jnp.einsum("nkrh,nkch->nkrc", qr, k, preferred_element_type=f32)
    s_own = jnp.where(visible[:, None, None, :], s_own * scale, neg)  # (N, K, R, C)
    top = jnp.max(s_own, axis=-1)
    if prefix_k is not None:
        b, _, p, _ = prefix_k.shape
        g = n // b
        # (N, K, R, .) <-> (B, K, G*R, .): the rows of one prompt as one matrix per kv head.
        to_groups = lambda x: (x.reshape(b, g, nkv, rep, -1).transpose(0, 2, 1, 3, 4)  # noqa: E731
                               .reshape(b, nkv, g * rep, -1))
        from_groups = lambda x: (x.reshape(b, nkv, g, rep, -1).transpose(0, 2, 1, 3, 4)  # noqa: E731
                                 .reshape(n, nkv, rep, -1))
        s_pre = jnp.einsum("bkqh,bkph->bkqp", to_groups(qr), prefix_k, preferred_element_type=f32)
        s_pre = from_groups(jnp.where(prefix_valid[:, None, None, :], s_pre * scale, neg))
        top = jnp.maximum(top, jnp.max(s_pre, axis=-1))
    e_own = jnp.exp(s_own - top[..., None])
    denom = jnp.sum(e_own, axis=-1)
    if prefix_k is not None:
        e_pre = jnp.exp(s_pre - top[..., None])
        denom = denom + jnp.sum(e_pre, axis=-1)
    inv = (1.0 / denom)[..., None]
    o = jnp.einsum("nkrc,nkch->nkrh", (e_own * inv).astype(v.dtype), v,
                   preferred_element_type=f32)
    if prefix_k is not None:
        w_pre = to_groups((e_pre * inv).astype(prefix_v.dtype))
        o = o + from_groups(jnp.einsum("bkqp,bkph->bkqh", w_pre, prefix_v,
                                       preferred_element_type=f32))
    return o.reshape(n, 1, nh, hd).astype(q.dtype)
