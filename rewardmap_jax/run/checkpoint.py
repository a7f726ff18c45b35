"""Orbax checkpoints for a training run: state pytrees, data-iterator state, metadata, preemption.

Layout: `<workdir>/checkpoints/<step>/` holds one Orbax item per top-level key of the `state`
mapping the trainer passes (by convention `params`, `opt_state`, `rng`, `step`; any pytrees of
arrays, typed PRNG keys included), plus

* `data/process_<i>-of-<n>.json`: each process's data-iterator state (a JSON-able dict, e.g. the
  Grain iterator's `get_state()`); every host keeps its own, since each reads its own shard;
* `meta/`: a JSON dict of run metadata (curriculum stage, wall time, config name, ...).

Keeping each state key its own item lets `export` restore `params` alone, without the optimizer
state (2x the parameters for Adam).

Atomicity comes from Orbax: a step is written to `<step>.orbax-checkpoint-tmp-*` and renamed (or
marked with `commit_success.txt` on object stores) only once complete; unfinished directories
are never listed as steps, so a run killed mid-save resumes from the previous complete one.

Preemption: `PreemptionGuard` turns SIGTERM into a flag. The loop asks `manager.should_save(step)`
each step; on preemption it is true (on every host at the same step), the loop saves and exits:

    with CheckpointManager(workdir, every_steps=100, keep=3) as ckpt:
        restored = ckpt.restore(abstract_state)          # None on a fresh run
        for step in range(start, total):
            state = train_step(state, batch)
            if ckpt.should_save(step):
                ckpt.save(step, state, data_state=it.get_state(), metadata={...})
            if ckpt.preempted:
                break
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import threading
from collections.abc import Mapping
from types import FrameType
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

log = logging.getLogger(__name__)

CHECKPOINT_SUBDIR = "checkpoints"
DATA_ITEM = "data"
META_ITEM = "meta"
_RESERVED = (DATA_ITEM, META_ITEM)
# Key of a restored data state written by another number of processes (ProcessJsonHandler).
OTHER_TOPOLOGY = "other_topology"


# --------------------------------------------------------------------------------------------
# Per-process JSON item (data-iterator state)
# --------------------------------------------------------------------------------------------


def _process_file(directory: epath.Path) -> epath.Path:
    return directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"


class ProcessJsonHandler(ocp.CheckpointHandler):
    """Writes one JSON file per process (Orbax's JsonSave writes from the primary host only)."""

    def save(self, directory: epath.Path, args: ProcessJsonSave) -> None:
        _process_file(directory).write_text(json.dumps(args.state, sort_keys=True))

    def restore(self, directory: epath.Path, args: ProcessJsonRestore | None = None) -> Any:
        """This process's state; when the checkpoint was written by another number of
        processes, `{OTHER_TOPOLOGY: [state of each of its processes, in order]}` instead (the
        caller decides how to carry a position over, e.g. `DataPipeline.restore_iterator`)."""
        path = _process_file(directory)
        if path.exists():
            return json.loads(path.read_text())
        found = sorted(directory.glob("process_*-of-*.json"),
                       key=lambda p: int(p.name.split("_")[1].split("-")[0]))
        if not found:
            raise FileNotFoundError(f"no data-iterator state in {directory}")
        return {OTHER_TOPOLOGY: [json.loads(p.read_text()) for p in found]}

    def metadata(self, directory: epath.Path) -> None:
        return None

    def finalize(self, directory: epath.Path) -> None:
        pass

    def close(self) -> None:
        pass


def process_state(data_state: dict[str, Any], key: str) -> Any:
    """Entry `key` of a restored per-process data state; from a checkpoint written by another
    number of processes (`OTHER_TOPOLOGY`), the first process's, after checking that every
    process had read the same number of global batches (`batches`)."""
    if OTHER_TOPOLOGY not in data_state:
        return data_state.get(key)
    states = [s[key] for s in data_state[OTHER_TOPOLOGY] if key in s]
    if len({int(s.get("batches", -1)) for s in states}) > 1:
        raise ValueError(f"the checkpoint's {key!r} data streams are at different global "
                         "batches on different processes; resume with its topology")
    return states[0] if states else None


@ocp.args.register_with_handler(ProcessJsonHandler, for_save=True)
@dataclasses.dataclass
class ProcessJsonSave(ocp.args.CheckpointArgs):
    state: Any


@ocp.args.register_with_handler(ProcessJsonHandler, for_restore=True)
@dataclasses.dataclass
class ProcessJsonRestore(ocp.args.CheckpointArgs):
    pass


# --------------------------------------------------------------------------------------------
# Preemption
# --------------------------------------------------------------------------------------------


class PreemptionGuard:
    """Turns the given signals into a flag (`requested`) that the training loop polls.

    Only the main thread can install signal handlers; elsewhere (e.g. a test runner thread) the
    guard stays inert and says so in the log. `uninstall()` restores the previous handlers.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)) -> None:
        self._event = threading.Event()
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            log.warning("PreemptionGuard: not in the main thread; signal handlers not installed")
            return
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        del frame
        # Logging from a signal handler can deadlock on the handler's lock; only set the flag.
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def request(self) -> None:
        """Sets the flag by hand (tests, or a trainer that detects preemption another way)."""
        self._event.set()

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def _any_process(flag: bool) -> bool:
    """True on every process if `flag` is true on any (a collective: call it in lockstep)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.array([flag]))))


# --------------------------------------------------------------------------------------------
# Manager
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Restored:
    """A restored checkpoint: `state` mirrors the `abstract_state` mapping asked for."""

    step: int
    state: dict[str, Any]
    data_state: dict[str, Any] | None
    metadata: dict[str, Any]


def checkpoint_dir(workdir: str | epath.PathLike) -> epath.Path:
    return epath.Path(workdir) / CHECKPOINT_SUBDIR


def abstract_like(tree: Any) -> Any:
    """`ShapeDtypeStruct`s (with each array's sharding) for restoring into the same layout."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


_LEAF_KEY = "__leaf__"


def _wrap(tree: Any) -> Any:
    """Orbax's StandardSave wants a container: a bare array (e.g. `step`, `rng`) gets one."""
    return {_LEAF_KEY: tree} if jax.tree_util.treedef_is_leaf(jax.tree.structure(tree)) else tree


def _unwrap(tree: Any) -> Any:
    if isinstance(tree, Mapping) and set(tree) == {_LEAF_KEY}:
        return tree[_LEAF_KEY]
    return tree


def _check_state(state: Mapping[str, Any], what: str) -> None:
    if not isinstance(state, Mapping) or not state:
        raise TypeError(
            f"{what} must be a non-empty mapping of item name -> pytree, got {type(state).__name__}"
        )
    bad = [k for k in state if k in _RESERVED or not isinstance(k, str) or not k.isidentifier()]
    if bad:
        raise ValueError(f"{what}: item names {bad} are reserved ({_RESERVED}) or not identifiers")


class CheckpointManager:
    """Orbax `CheckpointManager` for one run: every-N saves, keep-last-K, SIGTERM, resume.

    Args:
        workdir: the run directory (an absolute local path, or anything `etils.epath` opens,
            e.g. gs://).
        every_steps: save when `step % every_steps == 0` (0 = only forced/preemption saves).
        keep: number of most recent checkpoints kept (older ones are deleted after a save).
        async_save: write in a background thread; `wait()`/`close()` block until written.
        handle_preemption: install a SIGTERM `PreemptionGuard`.
    """

    def __init__(
        self,
        workdir: str | epath.PathLike,
        *,
        every_steps: int = 100,
        keep: int = 3,
        async_save: bool = True,
        handle_preemption: bool = True,
    ) -> None:
        if every_steps < 0:
            raise ValueError(f"checkpoint.every_steps must be >= 0, got {every_steps}")
        if keep < 1:
            raise ValueError(f"checkpoint.keep must be >= 1, got {keep}")
        if "://" not in str(workdir) and not os.path.isabs(workdir):
            # Orbax refuses relative paths deep inside its first save; the CLIs make every path
            # absolute at the edge (config_utils.absolute_path).
            raise ValueError(f"checkpoint workdir must be an absolute path, got {str(workdir)!r}")
        self.every_steps = every_steps
        self.directory = checkpoint_dir(workdir)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                enable_async_checkpointing=async_save,
                # Leftover tmp dirs of a save killed midway are removed on the next start.
                cleanup_tmp_directories=True,
                create=True,
            ),
        )
        # Finish that start-up cleanup now: left in its background thread, it races interpreter
        # shutdown (and spams a traceback) when a run fails before its first save.
        await_cleanup = getattr(self._manager, "_maybe_await_cleanup_tmp_directory", None)
        if await_cleanup is not None:
            await_cleanup()
        self._guard = PreemptionGuard() if handle_preemption else None
        self._preempted = False

    @classmethod
    def from_config(cls, workdir: str | epath.PathLike, cfg: Any) -> CheckpointManager:
        """From the `config.checkpoint` section (configs/curriculum.py)."""
        return cls(
            workdir,
            every_steps=int(cfg.every_steps),
            keep=int(cfg.keep),
            async_save=bool(cfg.async_save),
            handle_preemption=bool(cfg.save_on_preemption),
        )

    # -- queries ------------------------------------------------------------------------------

    def all_steps(self) -> list[int]:
        """Complete checkpoints, oldest first (unfinished tmp directories never appear)."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def should_save(self, step: int) -> bool:
        """True when `step` is a save step or a preemption was signalled (on any process).

        A collective in multi-process runs: call it at every step on every process.
        """
        if self._guard is not None and not self._preempted:
            self._preempted = _any_process(self._guard.requested)
        periodic = self.every_steps > 0 and step % self.every_steps == 0
        return periodic or self._preempted

    @property
    def preempted(self) -> bool:
        """Whether a preemption signal was seen by the last `should_save` call."""
        return self._preempted

    def request_preemption(self) -> None:
        """Marks the run as preempted, as SIGTERM would."""
        if self._guard is None:
            self._guard = PreemptionGuard(signals=())
        self._guard.request()

    # -- save / restore -----------------------------------------------------------------------

    def save(
        self,
        step: int,
        state: Mapping[str, Any],
        *,
        data_state: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        wait: bool = False,
    ) -> bool:
        """Saves `state` (item name -> pytree) and the JSON extras at `step`.

        Every process must call it (each writes its shards and its own data state). Returns
        False when a checkpoint for `step` already exists (nothing is overwritten).
        """
        _check_state(state, "state")
        if step in self._manager.all_steps():
            log.info("checkpoint for step %d already exists; not saving again", step)
            return False
        items: dict[str, ocp.args.CheckpointArgs] = {
            name: ocp.args.StandardSave(_wrap(tree)) for name, tree in state.items()
        }
        if data_state is not None:
            try:  # fail here, not later in the background writer
                json.dumps(data_state)
            except (TypeError, ValueError) as e:
                raise TypeError(f"data_state must be JSON-serialisable: {e}") from e
            items[DATA_ITEM] = ProcessJsonSave(dict(data_state))
        items[META_ITEM] = ocp.args.JsonSave(dict(metadata or {}))
        saved = self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        if wait or self._preempted:
            self._manager.wait_until_finished()
        if saved:
            log.info("checkpoint step %d -> %s", step, self.directory)
        return bool(saved)

    def restore(
        self,
        abstract_state: Mapping[str, Any],
        step: int | None = None,
        *,
        data_state: bool = True,
    ) -> Restored | None:
        """Restores the items named in `abstract_state` at `step` (default: the latest).

        `abstract_state` maps item names to pytrees of `jax.ShapeDtypeStruct` (with the target
        `sharding`: arrays are restored straight into that layout) or of concrete arrays.
        Returns None when there is no complete checkpoint yet (a fresh run).
        """
        _check_state(abstract_state, "abstract_state")
        self.wait()
        steps = self.all_steps()
        if step is None:
            if not steps:
                return None
            step = steps[-1]
        elif step not in steps:
            raise FileNotFoundError(
                f"no complete checkpoint for step {step} in "
                f"{self.directory}; available steps: {steps}"
            )
        step_dir = self.directory / str(step)
        missing = [name for name in abstract_state if not (step_dir / name).exists()]
        if missing:
            have = sorted(p.name for p in step_dir.iterdir() if p.is_dir())
            raise KeyError(f"checkpoint {step_dir} has no item(s) {missing}; it holds {have}")
        items: dict[str, ocp.args.CheckpointArgs] = {
            name: ocp.args.StandardRestore(_wrap(abstract_like(tree)))
            for name, tree in abstract_state.items()
        }
        want_data = data_state and (step_dir / DATA_ITEM).exists()
        if want_data:
            items[DATA_ITEM] = ProcessJsonRestore()
        items[META_ITEM] = ocp.args.JsonRestore()
        out = self._manager.restore(step, args=ocp.args.Composite(**items))
        return Restored(
            step=int(step),
            state={name: _unwrap(out[name]) for name in abstract_state},
            data_state=out[DATA_ITEM] if want_data else None,
            metadata=dict(out[META_ITEM] or {}),
        )

    def restore_numpy(self, item: str = "params", step: int | None = None) -> tuple[int, Any]:
        """One item as host numpy arrays, without knowing its structure (export, inspection).

        Returns (step, pytree of np.ndarray) in the saved structure and dtypes.
        """
        self.wait()
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        if step is None:
            step = steps[-1]
        elif step not in steps:
            raise FileNotFoundError(
                f"no complete checkpoint for step {step} in "
                f"{self.directory}; available steps: {steps}"
            )
        if not (self.directory / str(step) / item).exists():
            raise KeyError(f"checkpoint step {step} in {self.directory} has no item {item!r}")
        # The item's own handler on its directory: the manager would try (and warn about)
        # every other item's metadata too.
        path = self.directory / str(step) / item
        handler = ocp.PyTreeCheckpointHandler()
        tree = handler.metadata(path).tree
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        out = handler.restore(
            path, args=ocp.args.PyTreeRestore(item=tree, restore_args=restore_args)
        )
        return int(step), _unwrap(out)

    # -- lifecycle ----------------------------------------------------------------------------

    def wait(self) -> None:
        """Blocks until any asynchronous save is written and committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
        if self._guard is not None:
            self._guard.uninstall()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def latest_step(workdir: str | epath.PathLike) -> int | None:
    """The latest complete checkpoint step in `workdir`, or None."""
    directory = checkpoint_dir(workdir)
    if not directory.exists():
        return None
    with CheckpointManager(workdir, async_save=False, handle_preemption=False) as mgr:
        return mgr.latest_step()


def restore_latest(
    workdir: str | epath.PathLike, abstract_state: Mapping[str, Any]
) -> Restored | None:
    """Automatic resume: the latest complete checkpoint in `workdir`, or None on a fresh run."""
    if not checkpoint_dir(workdir).exists():
        return None
    with CheckpointManager(workdir, async_save=False, handle_preemption=False) as mgr:
        return mgr.restore(abstract_state)


def load_params(workdir: str | epath.PathLike, like: Any,
                step: int | None = None) -> tuple[Any, int]:
    """(params of checkpoint `step` (default: the latest) of the run in `workdir`, its step),
    laid out like `like`; FileNotFoundError when the run has no complete checkpoint."""
    with CheckpointManager(workdir, async_save=False, handle_preemption=False) as mgr:
        got = mgr.restore({"params": abstract_like(like)}, step, data_state=False)
    if got is None:
        raise FileNotFoundError(f"no complete checkpoint in {workdir}")
    return got.state["params"], int(got.step)
