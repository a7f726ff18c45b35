"""Small NNX building blocks with HF-exact numerics and logical-axis annotations.

Every parameter carries `out_sharding` metadata: a tuple of logical axis names (one per dim),
created with `eager_sharding=False` so construction needs no mesh. `sharding.py` maps the names to
mesh axes (`nnx.get_partition_spec` under logical-axis rules). Names used: see docs/model.md.

Activations are constrained by logical names too (`constrain`), but only inside
`activation_sharding(mesh, rules)` (flax logical-axis rules + `jax.set_mesh`); elsewhere it is a
no-op, so the model runs unchanged without a mesh.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.core import spmd as flax_spmd

from rewardmap_jax.model.sharding import logical_to_spec

# Logical names of the decoder's residual stream (B, L, D): rows over the batch mesh axes. The
# hidden dim is left to XLA (it follows the FSDP-sharded weights inside each matmul).
RESIDUAL_AXES = ("batch", None, None)

# HF `_init_weights`: normal(0, initializer_range=0.02) for Linear/Embedding, zeros for biases.
INIT_STD = 0.02


class KeySeq:
    """Deterministic key stream with the `rngs.params()` interface of `nnx.Rngs`.

    A plain Python counter + `fold_in`: `nnx.Rngs` updates a Variable per draw, which dominates
    `eval_shape` time for 800-parameter models.
    """

    def __init__(self, key: jax.Array):
        self.key = key
        self.count = 0

    def params(self) -> jax.Array:
        self.count += 1
        return jax.random.fold_in(self.key, self.count)


def param(
    rngs: nnx.Rngs | KeySeq | None,
    shape: tuple[int, ...],
    axes: tuple[str | None, ...],
    dtype: jnp.dtype,
    init: str = "normal",
) -> nnx.Param:
    """A Param of `shape` annotated with logical `axes`; init "normal" | "zeros" | "ones"."""
    if len(axes) != len(shape):
        raise ValueError(f"axes {axes} do not match shape {shape}")
    if init == "normal":
        value = INIT_STD * jax.random.normal(rngs.params(), shape, jnp.float32)
        value = value.astype(dtype)
    elif init == "zeros":
        value = jnp.zeros(shape, dtype)
    elif init == "ones":
        value = jnp.ones(shape, dtype)
    else:
        raise ValueError(f"unknown init {init!r}")
    return nnx.Param(value, out_sharding=axes, eager_sharding=False)


class Linear(nnx.Module):
    """y = x @ kernel + bias, kernel (in, out) = torch `weight.T`; computed in `dtype`."""

    def __init__(
        self,
        din: int,
        dout: int,
        *,
        axes: tuple[str, str],
        bias: bool,
        dtype: jnp.dtype,
        param_dtype: jnp.dtype,
        rngs: nnx.Rngs,
    ):
        self.dtype = dtype
        self.kernel = param(rngs, (din, dout), axes, param_dtype)
        self.bias = param(rngs, (dout,), (axes[1],), param_dtype, "zeros") if bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class RMSNorm(nnx.Module):
    """HF Qwen2RMSNorm: fp32 statistics, cast back to the input dtype BEFORE the weight multiply.

    Flax's stock RMSNorm multiplies in fp32 first, which differs in bf16 (spec §1.7, §7.7).
    """

    def __init__(self, dim: int, *, eps: float, axis_name: str, param_dtype: jnp.dtype,
                 dtype: jnp.dtype):
        self.eps = eps
        self.dtype = dtype
        self.weight = param(None, (dim,), (axis_name,), param_dtype, "ones")

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(self.dtype) * y.astype(x.dtype)


def rotate_half(x: jax.Array) -> jax.Array:
    """cat(-x2, x1) over the last axis (the HF rotate-half convention)."""
    h = x.shape[-1] // 2
    return jnp.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """`with_sharding_constraint` on activation `x` by logical axis `names` (one per dim).

    Active only when flax logical-axis rules are set (`nnx.logical_axis_rules`) AND a mesh is
    set (`jax.set_mesh`), e.g. via `activation_sharding`; otherwise `x` is returned unchanged.
    Rules map as in `sharding.logical_to_spec`: a dim not divisible by its mesh axes stays
    replicated (e.g. a batch of 1), each mesh axis is used once per array.
    """
    rules = flax_spmd.get_logical_axis_rules()
    mesh = jax.sharding.get_abstract_mesh()
    if not rules or mesh.empty:
        return x
    spec = logical_to_spec(names, dict(rules), x.shape, mesh, where=f"activation {x.shape}")
    return jax.lax.with_sharding_constraint(x, spec)


@contextlib.contextmanager
def activation_sharding(
    mesh: jax.sharding.Mesh, rules: Mapping[str, Any] | Sequence[tuple[str, Any]]
) -> Iterator[None]:
    """Context under which the model constrains its activations on `mesh` (`constrain`).

    Trace (first call of a jitted step) inside it: `rules` are the logical -> mesh axis rules
    (`cfg.mesh.rules` pairs or `sharding.rules_from_config`), and need a `batch` entry.
    """
    pairs = tuple(rules.items()) if isinstance(rules, Mapping) else tuple(
        (name, tuple(a) if isinstance(a, list) else a) for name, a in rules)
    with jax.set_mesh(mesh), nnx.logical_axis_rules(pairs):
        yield


def remat_policy(name: str):
    """`jax.checkpoint` policy for the config's remat name ("full" saves nothing)."""
    if name == "full":
        return jax.checkpoint_policies.nothing_saveable
    if name == "dots":
        return jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims
    raise ValueError(f"no checkpoint policy for remat={name!r}")


def remat_layer(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """`jax.checkpoint(fn, policy)` for one layer of a stack, with its backward pass fenced.

    `fn(static, *args)`: `static` is hashable (an nnx graphdef), `args` are pytrees of arrays.
    Values and gradients are exactly those of `jax.checkpoint(fn, policy, static_argnums=(0,))`.

    Why the fence: plain `jax.checkpoint` bounds what the *forward* pass keeps, but in an
    unrolled stack nothing orders each layer's *weight* gradients. XLA's TPU scheduler (bottom
    up) places them next to their only user, the optimizer update at the end of the step, and
    keeps every layer's rematerialised activations alive until then. At the official lengths
    (docs/memory.md §5.2) the TPU compiler refused the 3B update (97.9 GB of temporaries for a
    95.7 GB chip); with 18 layers, its peak held 14 layers' recomputed MLP activations. With
    the fence the full-depth update needs 16.5 GiB of temporaries. Here the layer's whole
    cotangent (input and parameters) leaves its backward through one
    `lax.optimization_barrier`, so the next layer's backward cannot start before this layer's
    weight gradients exist, and the activations die with the layer.
    """
    ck = jax.checkpoint(fn, policy=remat_policy(name), static_argnums=(0,))

    @functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
    def layer(static, *args):
        return ck(static, *args)

    def fwd(static, *args):
        # The residuals are what the policy saves (the inputs for "full"); the pullback
        # rematerialises the rest.
        return jax.vjp(functools.partial(ck, static), *args)

    def bwd(static, pullback, ct):
        del static
        return jax.lax.optimization_barrier(pullback(ct))

    layer.defvjp(fwd, bwd)
    return layer
