"""The training loop: supervised warm start, then curriculum GRPO with the RewardMap reward.

    python -m rewardmap_jax.main --config configs/curriculum.py --workdir runs/tiny

`run(config, workdir)` trains for `sft.steps + train.rl_steps` global steps:

* steps [0, sft.steps): cross-entropy on the answer tokens of map-world questions (`sft.tasks`
  mixture) - a random model cannot be rewarded into the answer format;
* then the reference policy for the KL term is frozen (a copy of the warm-started params), the
  warm-start model is evaluated on the held-out data (`rewardmap_jax.evaluation`: the map
  world's `eval.split`, or the held-out ReasonMap / ReasonMap-Plus files when
  `data.source="reasonmap"`; SIGTERM stops it between batches), and GRPO runs: next prompt
  batch (curriculum) -> G samples -> text -> reward components -> group advantages ->
  `ppo_epochs` x mini-batch updates -> metrics; a checkpoint every `checkpoint.every_steps`,
  at the phase switch and on SIGTERM;
* a final held-out evaluation (JSON + Markdown report with standard errors), a rollout gallery
  and the reward/accuracy plot.

A run resumes from the latest checkpoint in `workdir` (params, optimizer, step, rng, data
iterators, reference params) and reproduces the uninterrupted run bit for bit: every random
draw is keyed by (seed, step). It may resume on another topology (devices, processes, mesh):
arrays are restored into the new shardings and the data streams continue at the next global
batch. See docs/training.md.

Data parallelism (docs/scaling.md): each process reads, decodes and preprocesses only the rows
of each global batch that its devices hold (`Placement.rows`); every input of a jitted step is
a global array sharded on its batch dim over the data-parallel mesh axes (`rl/placement.py`),
and the steps run under the activation sharding rules. Process 0 writes logs, plots, gallery
and reports; every process takes part in checkpoints.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
from flax import nnx

from rewardmap_jax import evaluation
from rewardmap_jax.config_utils import ConfigError
from rewardmap_jax.model import sharding
from rewardmap_jax.model.build import build_model
from rewardmap_jax.rewards import reward as reward_lib
from rewardmap_jax.rl import grpo, inputs, optim, sampler, steps
from rewardmap_jax.rl import rollout as ro
from rewardmap_jax.rl.inputs import check_config  # noqa: F401 (the trainer's checks)
from rewardmap_jax.rl.placement import Placement
from rewardmap_jax.run import checkpoint as ck
from rewardmap_jax.run import metrics_writer, plots

log = logging.getLogger(__name__)


def compile_count() -> int:
    """Compilations so far of the loop's jitted functions (sampler, steps, device reward)."""
    return (sum(sampler.TRACE_COUNTS.values()) + sum(steps.TRACE_COUNTS.values())
            + sum(reward_lib.TRACE_COUNT.values()))


# ----------------------------------------------------------------------------------------------
# Setup
# ----------------------------------------------------------------------------------------------


def _optimizer(config: mlc.ConfigDict, phase: str, total_updates: int):
    o = config.optim.copy_and_resolve_references()
    if phase == "sft":
        for key in ("lr", "schedule", "warmup_steps", "min_lr_ratio"):
            o[key] = config.sft[key]
    return optim.make_optimizer(o, max(total_updates, 1))


def _batch_sizes(config: mlc.ConfigDict) -> dict[str, int]:
    """Prompt counts of the batches the trainer places on the mesh, by config key."""
    b = int(config.data.batch_size)
    mb = min(int(config.rl.mini_batch_size), b)
    sizes = {"data.batch_size": b, "rl.mini_batch_size": mb,
             "rl.mini_batch_size / rl.grad_accum": mb // max(int(config.rl.grad_accum), 1)}
    if int(config.sft.steps):
        sb = int(config.sft.batch_size)
        sizes["sft.batch_size"] = sb
        sizes["sft.batch_size / sft.grad_accum"] = sb // max(int(config.sft.get("grad_accum", 1)),
                                                             1)
    return sizes


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


class Trainer:
    """Holds the run state; `train()` runs the loop. One object per `run` call."""

    def __init__(self, config: mlc.ConfigDict, workdir: str | Path, mesh=None) -> None:
        """`mesh`: the device mesh (default `sharding.make_mesh(config.mesh)` over all devices)."""
        self.config, self.workdir = config, Path(workdir)
        rl = config.rl
        self.mesh = sharding.make_mesh(config.mesh) if mesh is None else mesh
        self.place = Placement(self.mesh, sharding.rules_from_config(config.mesh))
        # Config, tokenizer, reward and data first: a run that cannot work fails in seconds
        # with every problem named, not after loading the weights (rl/inputs.py).
        got = inputs.prepare_inputs(config, self.workdir, self.place)
        self.tokenizer, self.reward_fn = got.tokenizer, got.reward_fn
        self.sft_data, self.rl_data, self.evaluator = got.sft_data, got.rl_data, got.evaluator
        self.sft_steps = int(config.sft.steps)
        rl_steps = int(config.train.rl_steps)  # -1: no RL phase (SFT only)
        self.rl_steps = 0 if rl_steps < 0 else rl_steps or (self.rl_data.num_steps or 0)
        if not self.rl_steps and rl_steps >= 0 and config.curriculum.repeat:
            raise ConfigError("train.rl_steps must be > 0 when curriculum.repeat is set")
        if rl_steps < 0 and not int(config.sft.steps):
            raise ConfigError("train.rl_steps=-1 (SFT only) needs sft.steps > 0")
        self.total = self.sft_steps + self.rl_steps
        self.g = int(rl.num_generations)
        b = self.rl_data.batch_size
        mb = min(int(rl.mini_batch_size), b)
        if b % mb:
            raise ConfigError(f"data.batch_size {b} is not divisible by rl.mini_batch_size {mb}")
        self.minibatches = b // mb
        self.loss_cfg = grpo.GRPOLossConfig.from_config(rl)
        self.sp = sampler.params_from_config(rl, got.model_cfg)
        self.place.warn_unsharded(_batch_sizes(config))
        self.model = build_model(config, self.mesh)
        self.graphdef, self.params = nnx.split(self.model, nnx.Param)
        self.mcfg = self.model.cfg
        # Replicated over the mesh (not committed to one device): restored into this run's
        # mesh on resume, whatever the saving run's, and global in multi-process runs.
        seed = int(config.seed)
        self.base_key = jax.jit(lambda: jax.random.key(seed),
                                out_shardings=self.place.replicated())()
        self.freeze_vision = bool(config.optim.freeze_vision)
        self.ref_params = None
        self._done = 0  # the last completed step (for the failure message)
        self.reports: list[dict[str, Any]] = []  # evaluation summaries (no per-question rows)

    # -- phases --------------------------------------------------------------------------------

    def _init_phase(self, phase: str) -> None:
        chunk = int(self.config.rl.logprob_chunk)
        if phase == "sft":
            self.tx = _optimizer(self.config, "sft", self.sft_steps)
            # Donated state: nothing keeps old params (Orbax copies to host inside `save`).
            self.step_fn = steps.make_sft_step(
                self.graphdef, self.tx, chunk=chunk, freeze_vision=self.freeze_vision,
                grad_accum=int(self.config.sft.get("grad_accum", 1)), donate=True,
                placement=self.place)
        else:
            rl = self.config.rl
            updates = self.rl_steps * self.minibatches * int(rl.ppo_epochs)
            self.tx = _optimizer(self.config, "rl", updates)
            self.step_fn = steps.make_grpo_step(
                self.graphdef, self.tx, self.loss_cfg, self.g, chunk=chunk,
                mismatch_threshold=float(rl.logp_mismatch_alarm), grad_accum=int(rl.grad_accum),
                freeze_vision=self.freeze_vision, donate=True, placement=self.place,
                layout=rl.sequence_layout)
            self.logp_fn = steps.make_logprob_fn(self.graphdef, self.g, chunk=chunk,
                                                 placement=self.place, layout=rl.sequence_layout)
        self.phase = phase

    def _state(self) -> dict[str, Any]:
        state = {"params": self.params, "opt_state": self.opt_state,
                 "rng": jax.random.key_data(self.base_key)}
        if self.phase == "rl" and self.ref_params is not None:
            state["ref_params"] = self.ref_params
        return state

    def _data_state(self) -> dict[str, Any]:
        out = {"rl": self.rl_it.get_state()}
        if self.sft_it is not None:
            out["sft"] = self.sft_it.get_state()
        return out

    def _needs_ref(self) -> bool:
        return float(self.config.rl.kl_coef) != 0.0

    def _restore_or_init(self, ckpt: ck.CheckpointManager) -> int:
        latest = ckpt.latest_step()
        step = latest or 0
        self._init_phase("sft" if step < self.sft_steps else "rl")
        self.opt_state = self._init_opt_state()
        self.sft_it = self.sft_data.iterator() if self.sft_data else None
        self.rl_it = self.rl_data.iterator()
        if latest is None:
            init_from = self.config.train.get("init_from")
            if init_from:  # a fresh run starting from another run's params
                step_from = int(self.config.train.get("init_from_step", 0)) or None
                self.params, from_step = ck.load_params(init_from, self.params, step_from)
                log.info("initialised from the params of step %d of %s", from_step, init_from)
            if self.phase == "rl" and self._needs_ref():  # no warm start: RL from step 0
                self.ref_params = jax.tree.map(jnp.copy, self.params)
            return 0
        abstract = self._state()
        if self.phase == "rl" and self._needs_ref():
            abstract["ref_params"] = self.params
        # Restored straight into this run's shardings, whatever the saving run's topology.
        restored = ckpt.restore(ck.abstract_like(abstract))
        self.params, self.opt_state = restored.state["params"], restored.state["opt_state"]
        self.base_key = jax.random.wrap_key_data(restored.state["rng"])
        self.ref_params = restored.state.get("ref_params")
        ds = restored.data_state or {}
        self.rl_it = self.rl_data.restore_iterator(ck.process_state(ds, "rl"))
        if self.sft_it is not None and ck.process_state(ds, "sft") is not None:
            self.sft_it = self.sft_data.restore_iterator(ck.process_state(ds, "sft"))
        self.reports = restored.metadata.get("reports", [])
        log.info("resumed from step %d (phase %s)", restored.step, self.phase)
        return restored.step

    def _init_opt_state(self) -> Any:
        """A fresh optimizer state laid out on the mesh like the params (scalars replicated),
        as the update step returns it: otherwise the 2nd step would compile again. Built by a
        jitted init straight into those shardings (also across processes)."""
        rules = sharding.rules_from_config(self.config.mesh)
        shardings = sharding.state_shardings(jax.eval_shape(self.tx.init, self.params),
                                             self.mesh, rules,
                                             tuple(self.config.mesh.get("path_rules", ())))
        return jax.jit(self.tx.init, out_shardings=shardings)(self.params)

    def _switch_to_rl(self) -> None:
        """Freezes the reference policy and starts the GRPO optimizer."""
        self._init_phase("rl")
        self.opt_state = self._init_opt_state()
        if self._needs_ref():
            self.ref_params = jax.tree.map(jnp.copy, self.params)

    # -- one step of each phase ------------------------------------------------------------------

    def _prompts(self, batch: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(batch re-padded to the shapes all processes use, its prompt arrays: numpy, this
        process's rows)."""
        batch, patches = ro.agree_batch(batch, self.mcfg, self.place)
        return batch, ro.prepare_prompts(batch, self.mcfg, patches)

    def _global_tokens(self, batch: dict[str, Any], n: int, *keys: str) -> int:
        """Tokens under the masks `keys` of every process's rows of an `n`-prompt batch."""
        local = sum(np.asarray(batch[k]).sum(axis=1) for k in keys)
        return int(self.place.gather_rows(local, n).sum())

    def sft_step(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        batch, prompts = self._prompts(next(self.sft_it))
        n = self.sft_data.batch_size
        dev = ro.seq_batch(prompts, batch["target_ids"], batch["target_mask"].astype(bool),
                           self.place, n)
        t1 = time.perf_counter()
        self.params, self.opt_state, m = self.step_fn(self.params, self.opt_state, dev)
        m = jax.device_get(m)
        t2 = time.perf_counter()
        tokens = self._global_tokens(batch, n, "attention_mask", "target_mask")
        out = {f"sft/{k}": v for k, v in m.items()}
        out.update({"time/data": t1 - t0, "time/update": t2 - t1, "time/step": t2 - t0,
                    "tokens_per_s": tokens / (t2 - t0)})
        return out

    def _sample_round(self, key: jax.Array):
        batch, prompts = self._prompts(next(self.rl_it))
        # The weights as the trainer holds them (no merge here, no split in the sampler).
        res = ro.rollout((self.graphdef, self.params), prompts, batch, self.sp, key,
                         self.tokenizer, self.reward_fn, self.config.rl, self.place,
                         self.rl_data.batch_size)
        return batch, prompts, res

    def _dynamic_sampling(self, key, first):
        """DAPO (`rollout.dynamic_sampling`); extra rounds draw further curriculum batches, so
        a run with it needs a curriculum longer than `train.rl_steps` batches (or repeat)."""
        return ro.dynamic_sampling(
            first, lambda r: self._sample_round(jax.random.fold_in(key, r)), self.g,
            int(self.config.rl.dynamic_sampling_max_rounds), self.mcfg)

    def rl_step(self, step: int) -> dict[str, Any]:
        rl = self.config.rl
        key = jax.random.fold_in(self.base_key, step)
        t0 = time.perf_counter()
        try:
            batch, prompts, res = self._sample_round(key)
        except StopIteration:
            raise ConfigError(
                f"the RL curriculum ran out of batches at step {step} (train.rl_steps="
                f"{self.rl_steps}); with rl.dynamic_sampling every step may draw up to "
                "rl.dynamic_sampling_max_rounds batches: lengthen the curriculum or set "
                "curriculum.repeat") from None
        extra: dict[str, Any] = {}
        # Reward/accuracy curves come from the step's own curriculum batch: dynamic sampling
        # keeps mixed groups, whose accuracy hovers near 1/2 whatever the policy's.
        drawn = ro.reward_metrics(res.scores, res.task_ids)
        n = self.rl_data.batch_size
        prompt_tokens = self._global_tokens(batch, n, "attention_mask")
        if rl.dynamic_sampling:
            batch, prompts, res, extra = self._dynamic_sampling(key, (batch, prompts, res))
            extra["dynamic_sampling/update_reward"] = float(np.mean(res.scores["overall"]))
            prompt_tokens = self._global_tokens(batch, n, "attention_mask")
        t1 = time.perf_counter()
        mbs = ro.update_batches(prompts, res, self.g, self.minibatches, n, self.place)
        for mb in mbs:
            if self._needs_ref():
                mb["ref_logps"] = self.logp_fn(self.ref_params, mb)
            else:  # zeros laid out like the rows (lax.full_like keeps the sharding)
                mb["ref_logps"] = jax.lax.full_like(mb["old_logps"], 0)
            mb["sampler_logps"] = mb["old_logps"]
            if int(rl.ppo_epochs) > 1 or self.minibatches > 1 or self.loss_cfg.tis_cap > 0:
                mb["old_logps"] = self.logp_fn(self.params, mb)  # learner's own, pre-update
        metrics: list[dict[str, Any]] = []
        for _ in range(int(rl.ppo_epochs)):
            for mb in mbs:
                self.params, self.opt_state, m = self.step_fn(self.params, self.opt_state, mb)
                metrics.append(m)
        metrics = jax.device_get(metrics)
        t2 = time.perf_counter()
        out = {k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]}
        # The sampler/learner mismatch is only meaningful before the first update.
        for k in ("logp_diff_mean", "logp_diff_max", "logp_corr", "logp_alarm"):
            out[k] = float(metrics[0][k])
        out.update(drawn)
        out.update({f"adv/{k}": v for k, v in res.adv_metrics.items()}, **extra)
        stage = int(batch["stage"][0])
        tokens = prompt_tokens * self.g + int(res.all_lengths.sum())
        out.update({
            "response_length": float(res.all_lengths.mean()),
            "stage": stage, "stage_name": self.rl_data.schedule.stages[stage].name,
            "time/sample": res.times["sample"], "time/reward": res.times["reward"],
            "time/update": t2 - t1, "time/step": t2 - t0, "tokens_per_s": tokens / (t2 - t0),
        })
        self._last_rollout = res
        return out

    # -- evaluation and artefacts ----------------------------------------------------------------

    def evaluate(self, step: int, tag: str, per_task: int,
                 should_stop: Any = None) -> dict[str, Any] | None:
        """Held-out evaluation on the configured data (`evaluation.TrainingEvaluator`); None
        when `should_stop` (a preemption) interrupted it."""
        rep = self.evaluator.run(nnx.merge(self.graphdef, self.params), self.reward_fn,
                                 step=step, tag=tag, per_task=per_task, should_stop=should_stop,
                                 place=self.place)
        if rep is not None:
            self.reports = [r for r in self.reports if r["tag"] != tag] + [evaluation.slim(rep)]
            if jax.process_index() == 0:
                self.evaluator.write_summary(self.reports)
        return rep

    def _train_gallery(self, step: int) -> None:
        evaluation.write_training_gallery(self.workdir, step, self._last_rollout, self.g,
                                          int(self.config.log.gallery_questions),
                                          self.rl_data.sources)

    # -- driver ------------------------------------------------------------------------------------

    def train(self) -> None:
        cfg = self.config
        ckpt = ck.CheckpointManager.from_config(self.workdir, cfg.checkpoint)
        writer = None
        step = 0
        try:
            step = self._restore_or_init(ckpt)
            writer = metrics_writer.MetricsWriter.from_config(
                self.workdir, cfg.log, total_steps=self.total, initial_step=step)
            step, preempted = self._loop(ckpt, writer, step)
        except Exception as e:
            if not isinstance(e, ConfigError):  # main prints those itself
                log.error("training failed after step %d: %s: %s", self._done,
                          type(e).__name__, e)
            raise
        finally:
            # An in-flight async save must finish (or fail) now, not at interpreter shutdown:
            # the run then leaves a complete checkpoint or none, and one error.
            _close_quietly(writer, ckpt)
        primary = jax.process_index() == 0
        if primary and not preempted and cfg.log.plot_at_end:
            try:
                plots.plot_run(self.workdir)
            except ValueError as e:  # no reward/accuracy metrics (e.g. an SFT-only run)
                log.warning("no plot: %s", e)
        if primary:
            (self.workdir / "train_summary.json").write_text(json.dumps(
                {"step": step, "total": self.total, "preempted": preempted,
                 "compiles": compile_count(), "trace_counts": {
                     **sampler.TRACE_COUNTS, **steps.TRACE_COUNTS, **reward_lib.TRACE_COUNT},
                 "reports": self.reports},
                indent=1))

    def _loop(self, ckpt: ck.CheckpointManager, writer, step: int) -> tuple[int, bool]:
        """Steps from `step` to the end (or a preemption); returns (last step, preempted)."""
        cfg = self.config
        primary = jax.process_index() == 0
        preempted = False
        self._done = step
        while step < self.total:
            if (self.sft_steps and step == self.sft_steps and cfg.eval.at_sft_end
                    and not self._has_report("warm_start")):
                self._eval(writer, ckpt, step, "warm_start", int(cfg.eval.questions_per_task))
                if ckpt.preempted:  # the state at the switch is already checkpointed
                    preempted = True
                    break
            t0 = time.perf_counter()
            m = self.sft_step() if self.phase == "sft" else self.rl_step(step)
            step += 1
            m.update(step_time=time.perf_counter() - t0, compiles=compile_count(),
                     phase=self.phase, skipped_updates=int(optim.skipped_steps(self.opt_state)))
            writer.write(step, m)
            every = int(cfg.eval.every_steps)
            if every and step % every == 0 and step < self.total:
                self._eval(writer, ckpt, step, f"step{step}",
                           int(cfg.eval.periodic_questions_per_task))
            g_every = int(cfg.log.gallery_every_steps)
            if primary and self.phase == "rl" and g_every and step % g_every == 0:
                self._train_gallery(step)  # held-out pages are gallery/eval_<tag>.html
            if step == self.total and cfg.eval.final:
                self._eval(writer, ckpt, step, "final", int(cfg.eval.questions_per_task))
            if step == self.sft_steps and self.phase == "sft" and step < self.total:
                self._switch_to_rl()  # the checkpoint at the switch holds the RL state
            if ckpt.should_save(step) or step in (self.total, self.sft_steps):
                ckpt.save(step, self._state(), data_state=self._data_state(),
                          metadata={"phase": self.phase, "reports": self.reports,
                                    "stage": str(m.get("stage_name", self.phase))})
            self._done = step
            if ckpt.preempted and step < self.total:
                log.warning("preempted: checkpoint at step %d saved, exiting", step)
                preempted = True
                break
        if (not preempted and step == self.total and cfg.eval.final and not ckpt.preempted
                and not self._has_report("final")):  # resumed after an interrupted final eval
            self._eval(writer, ckpt, step, "final", int(cfg.eval.questions_per_task))
        return step, preempted or ckpt.preempted

    def _has_report(self, tag: str) -> bool:
        return any(r["tag"] == tag for r in self.reports)

    def _eval(self, writer, ckpt: ck.CheckpointManager, step: int, tag: str,
              per_task: int) -> None:
        def stop() -> bool:  # a collective (every process polls between the same batches)
            return ckpt.should_save(step) and ckpt.preempted

        rep = self.evaluate(step, tag, per_task, should_stop=stop)
        if rep is not None:
            writer.write(step, evaluation.eval_metrics(rep), force=True)


def _close_quietly(writer: Any, ckpt: ck.CheckpointManager) -> None:
    """Closes the metrics writer and the checkpoint manager (waiting for a pending save); a
    failure here is logged, not raised, so it never hides the error that ended the run."""
    for name, obj in (("metrics writer", writer), ("checkpoint manager", ckpt)):
        if obj is None:
            continue
        try:
            obj.close()
        except Exception as e:  # noqa: BLE001
            log.error("closing the %s failed: %s: %s", name, type(e).__name__, e)


def run(config: mlc.ConfigDict, workdir: str) -> None:
    """Entry point called by `rewardmap_jax.main`: train (resuming) in `workdir`."""
    Trainer(config, workdir).train()
