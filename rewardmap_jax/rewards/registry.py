"""Reward functions by name: the built-in `rewardmap` and user rewards from `path/file.py:fn`.

The trainer calls one uniform host-level interface:

    reward_fn = make_reward_fn(config.reward)          # config.reward.fn picks the function
    scores = reward_fn(records, completions)           # dict[str, np.ndarray], each (B,) float32
    scores["overall"]                                  # the total reward per completion

A user reward (EasyR1 convention `--config.reward.fn=path/to/file.py:fn`) is a plain function
`fn(records: list[Record], completions: list[str])` (optionally with a `config` keyword: the
reward config) returning either a dict of named per-completion scores or a list of per-completion
dicts; `overall` is required. A function of one argument is called EasyR1-style with
`[{"response", "response_length", "ground_truth", "record"}, ...]`. No package edit is needed.
The built-in reward also exposes its device path (`RewardMapReward.parse` then `.device`).
"""

from __future__ import annotations

import importlib.util
import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from rewardmap_jax.mapworld.records import Record
from rewardmap_jax.rewards import parse as P
from rewardmap_jax.rewards import reward as R
from rewardmap_jax.rewards.tables import TablesCache

RewardFn = Callable[[Sequence[Record], Sequence[str]], dict[str, np.ndarray]]
_FACTORIES: dict[str, Callable[[Any], RewardFn]] = {}


def register(name: str):
    """Decorator: registers `factory(reward_config) -> RewardFn` under `name`."""

    def deco(factory):
        if name in _FACTORIES:
            raise ValueError(f"reward {name!r} is already registered")
        _FACTORIES[name] = factory
        return factory

    return deco


def registered() -> tuple[str, ...]:
    return tuple(sorted(_FACTORIES))


def normalize_scores(out: Any, batch: int, where: str) -> dict[str, np.ndarray]:
    """Checks a reward's output and returns {name: (B,) float32}; ValueError saying what's wrong."""
    if isinstance(out, Sequence) and not isinstance(out, str | bytes):
        if len(out) != batch:
            raise ValueError(f"{where}: returned {len(out)} score dicts for {batch} completions")
        if not all(isinstance(d, Mapping) for d in out):
            raise ValueError(f"{where}: a returned list must hold one dict per completion")
        keys = set().union(*(d.keys() for d in out)) if out else {"overall"}
        missing = [k for k in keys if any(k not in d for d in out)]
        if missing:
            raise ValueError(f"{where}: score keys {sorted(missing)} missing for some completions")
        out = {k: [d[k] for d in out] for k in keys}
    if not isinstance(out, Mapping):
        raise ValueError(f"{where}: must return a dict of scores, got {type(out).__name__}")
    if "overall" not in out:
        raise ValueError(f"{where}: the returned scores need an 'overall' key, got {sorted(out)}")
    scores = {}
    for k, v in out.items():
        try:
            arr = np.asarray(v, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: score {k!r} is not numeric: {e}") from e
        if arr.shape != (batch,):
            raise ValueError(
                f"{where}: score {k!r} has {arr.shape[0]} values for {batch} completions"
            )
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{where}: score {k!r} has non-finite values")
        scores[str(k)] = arr
    return scores


class RewardMapReward:
    """The built-in RewardMap reward: host parsing + the jitted device reward."""

    def __init__(self, reward_config: Any = None) -> None:
        cfg = reward_config if reward_config is not None else {}
        self.spec = P.ParseSpec.from_config(cfg)
        self.params = R.RewardParams.from_config(cfg)
        self.cache = TablesCache()

    def parse(self, records: Sequence[Record], completions: Sequence[str]) -> dict[str, np.ndarray]:
        """Host step: text -> fixed-width arrays (see `parse.parse_batch`)."""
        return P.parse_batch(records, completions, self.spec, self.cache)

    def device(self, arrays: Mapping[str, Any]) -> dict[str, Any]:
        """Device step: arrays -> jax components (no host sync)."""
        return R.compute_rewards(dict(arrays), self.params)

    def __call__(
        self, records: Sequence[Record], completions: Sequence[str]
    ) -> dict[str, np.ndarray]:
        return R.to_numpy(self.device(self.parse(records, completions)))


@register("rewardmap")
def _rewardmap_factory(reward_config: Any) -> RewardFn:
    return RewardMapReward(reward_config)


def load_user_fn(spec: str) -> Callable[..., Any]:
    """Imports `fn` from `path/to/file.py:fn` (a clear ValueError when anything is off)."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise ValueError(f"reward.fn {spec!r}: expected a registered name or 'path/file.py:fn'")
    if not os.path.isfile(path):
        raise ValueError(f"reward.fn {spec!r}: no file {path!r}")
    mod_name = f"_rewardmap_user_reward_{abs(hash(os.path.abspath(path)))}"
    mod_spec = importlib.util.spec_from_file_location(mod_name, path)
    if mod_spec is None or mod_spec.loader is None:
        raise ValueError(f"reward.fn {spec!r}: cannot import {path!r} as a Python module")
    module = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(module)
    except Exception as e:  # the user's file: report where it failed
        raise ValueError(f"reward.fn {spec!r}: importing {path!r} failed: {e!r}") from e
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"reward.fn {spec!r}: {path!r} has no callable {name!r}")
    return fn


def easyr1_inputs(records: Sequence[Record], completions: Sequence[str]) -> list[dict[str, Any]]:
    """EasyR1-style reward inputs: response, response_length (chars), ground_truth, record."""
    return [
        {
            "response": c,
            "response_length": len(c),
            "ground_truth": r.routes if r.type == "planning" else r.answer,
            "record": r,
        }
        for r, c in zip(records, completions, strict=True)
    ]


def make_reward_fn(reward_config: Any = None) -> RewardFn:
    """The reward named by `reward_config.fn` (default `rewardmap`) behind the uniform interface."""
    cfg = reward_config if reward_config is not None else {}
    get = cfg.get if hasattr(cfg, "get") else lambda k, d: getattr(cfg, k, d)
    spec = str(get("fn", "rewardmap"))
    if spec in _FACTORIES:
        inner = _FACTORIES[spec](cfg)
    elif ":" in spec:
        inner = load_user_fn(spec)
    else:
        raise ValueError(f"reward.fn {spec!r}: not registered ({registered()}) and not path:fn")
    params = inspect.signature(inner).parameters if ":" in spec else {}
    takes_config = "config" in params
    # EasyR1 batch style: `compute_score(reward_inputs: list[dict]) -> list[dict]`
    easyr1 = len([p for p in params.values() if p.default is inspect.Parameter.empty]) == 1

    def reward_fn(records: Sequence[Record], completions: Sequence[str]) -> dict[str, np.ndarray]:
        if easyr1:
            return normalize_scores(
                inner(easyr1_inputs(records, completions)), len(completions), f"reward {spec!r}"
            )
        if len(records) != len(completions):
            raise ValueError(
                f"reward {spec!r}: {len(records)} records, {len(completions)} completions"
            )
        out = (
            inner(records, completions, config=cfg) if takes_config else inner(records, completions)
        )
        return normalize_scores(out, len(completions), f"reward {spec!r}")

    reward_fn.name = spec  # type: ignore[attr-defined]
    reward_fn.inner = inner  # type: ignore[attr-defined]
    return reward_fn
