"""The RewardMap reward on device: pure jitted functions over the arrays of `parse.parse_batch`.

Official rule (reason_map.py of github.com/fscdc/RewardMap, mode difficulty_aware;
docs/rewards.md):

    total = (correct * acc + detail_weight * detail [+ format_weight * format_ok]) * weight

* acc: VQA answer == ground truth; planning = the ReasonMap accuracy rule (endpoints match, every
  section's line exists and holds both its stops, each arrival is the next departure).
* detail (planning): 0 unless the endpoints match; then 2, plus per section i: -5 if i >= the
  question's transfer count, +4 (0 transfers: only if the line holds both endpoints) or +3 (with
  transfers) when the line exists, +1 for a correct transfer station while i < the transfer count;
  capped at `detail_cap` (no lower bound).
* weight: map difficulty easy/middle/hard -> `map_weights`, + `transfer_bonus` for planning with
  transfers. Mode `baseline`: weight 1 and no detail (`baseline_keeps_detail=True` keeps the detail
  as the official code's own "baseline" mode does).
* Options: `format_weight` > 0 adds the paper's explicit format term; `counting1_detail` enables the
  official (disabled) Counting1 stop-list reward: +0.5 per distinct correct intermediate stop,
  -0.5 per repeated or wrong stop, weighted by `detail_weight`.

Width deviation (documented in docs/rewards.md): a plan with more than `max_sections` sections is
never correct, and its sections past the width get the -5 penalty but no credit; Counting1 stops
past `max_stops` count as wrong. Within the widths the result equals the official code exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rewardmap_jax.mapworld.records import DIFFICULTIES, TASK_TYPES
from rewardmap_jax.rewards.tables import COUNTING1, PLANNING

COMPONENTS: tuple[str, ...] = (
    "overall",
    "accuracy",
    "correct_reward",
    "detail",
    "detail_reward",
    "format_ok",
    "format_reward",
    "weight",
)


@dataclasses.dataclass(frozen=True)
class RewardParams:
    """Static (hashable) reward settings; see the module docstring."""

    mode: str = "difficulty_aware"
    correct: float = 10.0
    detail_weight: float = 0.5
    detail_cap: float = 10.0
    endpoint_credit: float = 2.0
    route_credit_direct: float = 4.0
    route_credit_transfer: float = 3.0
    transfer_credit: float = 1.0
    extra_section_penalty: float = 5.0
    # Sections a plan may have beyond its question's transfer count before each further one pays
    # `extra_section_penalty`: 0 = the official code (every plan's last section pays it, so a
    # well-formed wrong plan can score below an unparseable answer), 1 = only sections beyond
    # the transfers + 1 a plan needs (a deviation; docs/rewards.md "planning traps").
    extra_section_allowance: int = 0
    map_weights: tuple[float, ...] = (1.0, 1.2, 1.5)  # in DIFFICULTIES order
    transfer_bonus: float = 0.5
    format_weight: float = 0.0
    counting1_detail: bool = False
    counting1_step: float = 0.5
    baseline_keeps_detail: bool = False

    @classmethod
    def from_config(cls, cfg: Any) -> RewardParams:
        """Reads the `reward` config section; unknown modes raise ValueError."""
        get = cfg.get if hasattr(cfg, "get") else lambda k, d: getattr(cfg, k, d)
        d = cls()
        mw = get("map_weights", None)
        map_weights = d.map_weights if mw is None else tuple(float(mw[k]) for k in DIFFICULTIES)
        kw = {
            f.name: type(getattr(d, f.name))(get(f.name, getattr(d, f.name)))
            for f in dataclasses.fields(cls)
            if f.name != "map_weights"
        }
        p = cls(map_weights=map_weights, **kw)
        if p.extra_section_allowance not in (0, 1):
            raise ValueError("reward.extra_section_allowance must be 0 (official) or 1, got "
                             f"{p.extra_section_allowance}")
        if p.mode not in ("difficulty_aware", "baseline"):
            raise ValueError(
                f"reward.mode must be 'difficulty_aware' or 'baseline', got {p.mode!r}"
            )
        return p


def _take_row(table: jax.Array, idx: jax.Array) -> jax.Array:
    """table (B, N) bool gathered at idx (B, ...) int; False for negative ids (pad/unknown)."""
    safe = jnp.clip(idx, 0, table.shape[-1] - 1)
    flat = jnp.take_along_axis(table, safe.reshape(safe.shape[0], -1), axis=1)
    return flat.reshape(idx.shape) & (idx >= 0)


def _on_line(member: jax.Array, line: jax.Array, station: jax.Array) -> jax.Array:
    """member (B, L, V); line, station (B, S) -> (B, S) bool; False for negative ids."""
    L, V = member.shape[1], member.shape[2]
    flat = member.reshape(member.shape[0], L * V)
    idx = jnp.clip(line, 0, L - 1) * V + jnp.clip(station, 0, V - 1)
    hit = jnp.take_along_axis(flat, idx, axis=1)
    return hit & (line >= 0) & (station >= 0)


def _chain(route, dep, arr, n, member):
    """Per-section facts shared by accuracy and detail: (valid_slot, line_ok, stops_ok, link)."""
    S = route.shape[1]
    i = jnp.arange(S)[None, :]
    valid = i < jnp.minimum(n, S)[:, None]
    line_ok = route >= 0
    stops_ok = line_ok & _on_line(member, route, dep) & _on_line(member, route, arr)
    next_dep = jnp.concatenate([dep[:, 1:], jnp.full_like(dep[:, :1], -1)], axis=1)
    not_last = i < (n[:, None] - 1)
    link = not_last & (arr == next_dep) & (arr >= 0)
    return valid, line_ok, stops_ok, link, not_last, i


def planning_accuracy(a: dict[str, jax.Array], member: jax.Array, s1, s2) -> jax.Array:
    """ReasonMap accuracy rule over the case-sensitive view; (B,) bool."""
    n = a["acc_n"]
    S = a["acc_route"].shape[1]
    valid, _, stops_ok, link, not_last, _ = _chain(
        a["acc_route"], a["acc_dep"], a["acc_arr"], n, member
    )
    ends = (n > 0) & (a["acc_first_dep"] == s1) & (a["acc_last_arr"] == s2)
    section_ok = stops_ok & (link | ~not_last)
    return ends & (n <= S) & jnp.all(section_ok | ~valid, axis=1)


def planning_detail(a: dict[str, jax.Array], member: jax.Array, s1, s2, q, p: RewardParams):
    """RewardMap detail score (before `detail_weight`); (B,) float32."""
    n = a["det_n"]
    valid, line_ok, stops_ok, link, _, i = _chain(
        a["det_route"], a["det_dep"], a["det_arr"], n, member
    )
    ends = (n > 0) & (a["det_first_dep"] == s1) & (a["det_last_arr"] == s2)
    direct = _on_line(member, a["det_route"], s1[:, None]) & _on_line(
        member, a["det_route"], s2[:, None]
    )
    qc = q[:, None]
    credit = jnp.where(
        qc == 0,
        jnp.where(direct, p.route_credit_direct, 0.0),
        jnp.where(line_ok, p.route_credit_transfer, 0.0),
    )
    bonus = jnp.where(stops_ok & link & (i + 1 <= qc), p.transfer_credit, 0.0)
    gained = jnp.sum(jnp.where(valid, credit + bonus, 0.0), axis=1)
    penalty = p.extra_section_penalty * jnp.maximum(
        n - q - p.extra_section_allowance, 0).astype(jnp.float32)
    score = jnp.where(ends, p.endpoint_credit + gained - penalty, 0.0)
    return jnp.minimum(score, p.detail_cap)


def counting1_detail(a: dict[str, jax.Array], between: jax.Array, found, p: RewardParams):
    """The (officially disabled) Counting1 stop-list reward; (B,) float32."""
    stops, n = a["stops"], a["stops_n"]
    K = stops.shape[1]
    k = jnp.arange(K)
    valid = k[None, :] < jnp.minimum(n, K)[:, None]
    correct = _take_row(between, stops)
    earlier = (stops[:, :, None] == stops[:, None, :]) & (k[None, None, :] < k[None, :, None])
    first = ~jnp.any(earlier & valid[:, None, :], axis=2)
    step = jnp.where(correct & first, p.counting1_step, -p.counting1_step)
    score = jnp.sum(jnp.where(valid, step, 0.0), axis=1)
    score = score - p.counting1_step * jnp.maximum(n - K, 0).astype(jnp.float32)
    return jnp.where(found, score, 0.0)


def _rewards(a: dict[str, jax.Array], p: RewardParams) -> dict[str, jax.Array]:
    rec = a["rec"]
    g = {k: a[k][rec] for k in ("type_id", "difficulty", "transfers", "answer", "s1", "s2")}
    member = a["member"][rec]
    is_plan = g["type_id"] == PLANNING
    acc_plan = planning_accuracy(a, member, g["s1"], g["s2"])
    acc_vqa = (a["vqa_code"] >= 0) & (a["vqa_code"] == g["answer"])
    acc = jnp.where(is_plan, acc_plan, acc_vqa)
    use_detail = p.mode == "difficulty_aware" or p.baseline_keeps_detail
    detail = jnp.zeros(acc.shape, jnp.float32)
    if use_detail:
        d_plan = planning_detail(a, member, g["s1"], g["s2"], g["transfers"], p)
        detail = jnp.where(is_plan, d_plan, detail)
        if p.counting1_detail:
            c1 = counting1_detail(a, a["between"][rec], a["between_found"][rec], p)
            detail = jnp.where(g["type_id"] == COUNTING1, c1, detail)
    if p.mode == "difficulty_aware":
        map_w = jnp.asarray(p.map_weights, jnp.float32)[jnp.clip(g["difficulty"], 0, 2)]
        weight = map_w + jnp.where(is_plan & (g["transfers"] > 0), p.transfer_bonus, 0.0)
    else:
        weight = jnp.ones(acc.shape, jnp.float32)
    correct_reward = jnp.where(acc, p.correct, 0.0)
    detail_reward = p.detail_weight * detail
    format_ok = a["format_ok"]
    format_reward = jnp.where(format_ok, p.format_weight, 0.0)
    overall = (correct_reward + detail_reward + format_reward) * weight
    out = {
        "overall": overall,
        "accuracy": acc.astype(jnp.float32),
        "correct_reward": correct_reward,
        "detail": detail,
        "detail_reward": detail_reward,
        "format_ok": format_ok.astype(jnp.float32),
        "format_reward": format_reward,
        "weight": weight,
    }
    return {k: v.astype(jnp.float32) for k, v in out.items()}


TRACE_COUNT = {"compute_rewards": 0}  # incremented at trace time; tests assert compile counts


def _traced(a, p):
    TRACE_COUNT["compute_rewards"] += 1
    return _rewards(a, p)


compute_rewards = jax.jit(_traced, static_argnums=1)
compute_rewards.__doc__ = """Jitted reward: (arrays from `parse_batch`, RewardParams) -> components.

Returns a dict of (B,) float32 arrays keyed by `COMPONENTS` (`overall` is the total).
Compiles once per (array shapes, params); shapes are fixed by the configured widths/buckets.
"""


def to_numpy(out: dict[str, jax.Array]) -> dict[str, np.ndarray]:
    """Device components -> host float32 arrays (blocks until ready)."""
    return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}


TYPE_IDS = {t: i for i, t in enumerate(TASK_TYPES)}
