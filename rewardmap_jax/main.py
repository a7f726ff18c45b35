r"""RewardMap training entry point.

    python -m rewardmap_jax.main --config configs/curriculum.py[:PRESET] --workdir runs/tiny \
        [--config.SECTION.KEY=VALUE ...]

Initialises multi-process JAX when launched as several processes (TPU pod, SLURM, or the
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables that `launch/` sets),
makes the workdir and every path in the config absolute (relative to the current directory),
saves the resolved config to WORKDIR/config.{json,yaml}, then runs
`rewardmap_jax.rl.trainer.run(config, workdir)`, which resumes from the latest checkpoint in
WORKDIR. Unknown keys and values of the wrong type stop the run before any compute.

Exit codes: 0 done; 1 bad flags or config.
"""

from __future__ import annotations

import importlib
import logging as std_logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections as mlc
from absl import app, flags, logging
from ml_collections import config_flags

from rewardmap_jax import config_utils

# `--help` prints this docstring: append the config file's own (presets and run commands).
__doc__ = f"{__doc__}\n{config_utils.config_doc()}"


TRAINER_MODULE = "rewardmap_jax.rl.trainer"  # tests substitute a fake trainer

_FLAGS: dict[str, Any] = {}


class _OwnInfoOnly(std_logging.Filter):
    """Keeps INFO records of this package and drops other libraries' INFO chatter (Orbax logs
    tens of lines per checkpoint), so the console shows the progress bar and our messages.
    Warnings and errors always pass; `--verbosity=1` shows everything."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or "rewardmap_jax" in record.pathname


def _quiet_third_party_info() -> None:
    if logging.get_verbosity() < 1:
        logging.get_absl_handler().addFilter(_OwnInfoOnly())


def _define_flags(argv: Sequence[str]) -> None:
    """Defines --config/--workdir. ml_collections reads the --config.* overrides from `argv`
    right here (not at parse time), so an unknown key fails in this call."""
    _FLAGS["config"] = config_flags.DEFINE_config_file(
        "config",
        default=str(config_utils.DEFAULT_CONFIG),
        help_string=config_utils.presets_help(),
        lock_config=True,
        sys_argv=list(argv),
    )
    _FLAGS["workdir"] = flags.DEFINE_string(
        "workdir", None, "Run directory (default: runs/<preset>)."
    )


def _unknown_key_message(argv: Sequence[str], error: Exception) -> str:
    key = str(error).strip("\"'")
    overrides = [a for a in argv if a.startswith("--config.")]
    culprits = [a for a in overrides if key and key in a.split("=", 1)[0].split(".")[1:]]
    shown = culprits[0] if culprits else " ".join(overrides)
    return (
        f"unknown config key {key!r} in {shown}: the config has no such key, and keys cannot "
        "be added from the command line (configs/curriculum.py and a run's config.yaml list "
        "the keys)"
    )


def initialize_distributed(config: mlc.ConfigDict) -> None:
    """Joins a multi-process run, if this process was launched as part of one.

    * JAX_COORDINATOR_ADDRESS (+ JAX_NUM_PROCESSES, JAX_PROCESS_ID; launch/local.sh): joins it,
      whatever `mesh.dist_mode` says (`run.distributed`'s "auto" reads the three variables).
    * REWARDMAP_DISTRIBUTED=1 (launch/tpu_pod.sh, launch/slurm.sbatch): JAX's own cluster
      detection (Cloud TPU metadata, SLURM variables).
    * Otherwise `rewardmap_jax.run.distributed.initialize_distributed(config.mesh)` decides
      (its "auto" mode: SLURM with several tasks, Open MPI, ...). A lone process runs alone.
    """
    import jax

    from rewardmap_jax.run import distributed

    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        distributed.initialize_distributed(
            {**config.get("mesh", {}), "dist_mode": "auto"})
    elif os.environ.get("REWARDMAP_DISTRIBUTED") == "1":
        jax.distributed.initialize()
    else:
        distributed.initialize_distributed(config.get("mesh", {}))


def run(config: mlc.ConfigDict, workdir: str | Path) -> int:
    """Everything after flag parsing: distributed init, config saving, dispatch."""
    import jax

    config_utils.validate_config(config)
    if "://" in str(workdir):
        raise config_utils.ConfigError(
            f"invalid --workdir {workdir}: a URL; metrics, plots and the gallery are "
            "written with local file I/O, so use a local path or a mounted bucket (gcsfuse) "
            "shared by all hosts"
        )
    # Relative paths are resolved once, here: Orbax refuses them, and config.json must name
    # the same directories for `export`/`evaluate` run from elsewhere.
    workdir = Path(config_utils.absolute_path(workdir))
    config_utils.absolute_config_paths(config)
    if missing := config_utils.missing_paths(config):
        raise config_utils.ConfigError("invalid config:\n  " + "\n  ".join(missing))
    initialize_distributed(config)
    primary = jax.process_index() == 0
    if not primary:
        logging.set_verbosity(logging.WARNING)  # logs come from process 0 only
    if primary:
        json_path, _ = config_utils.save_config(config, workdir)
        logging.info("config (preset %s) saved to %s", config.get("preset"), json_path)
        logging.info(
            "JAX %s: %d processes, %d devices (%s)",
            jax.__version__,
            jax.process_count(),
            jax.device_count(),
            jax.devices()[0].platform,
        )
    workdir.mkdir(parents=True, exist_ok=True)  # every host may write there (checkpoints)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        # No host starts before the workdir and its config exist.
        multihost_utils.sync_global_devices("rewardmap_jax.main: workdir ready")
    importlib.import_module(TRAINER_MODULE).run(config, str(workdir))
    return 0


def main(argv: Sequence[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected positional arguments: {list(argv[1:])}")
    _quiet_third_party_info()
    config = _FLAGS["config"].value
    try:
        preset = config.get("preset", "run")
    except OSError as e:  # the config file failed to load (ml_collections reports it lazily)
        logging.error("config error: %s", " ".join(str(e).split()))
        return 1
    workdir = _FLAGS["workdir"].value or os.path.join("runs", str(preset))
    try:
        return run(config, workdir)
    except config_utils.ConfigError as e:
        logging.error("%s", e)
        return 1


def cli(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    try:
        _define_flags(argv)
    except (KeyError, AttributeError) as e:
        print(f"FATAL config error: {_unknown_key_message(argv, e)}", file=sys.stderr)
        sys.exit(1)
    app.run(main, argv=argv, flags_parser=_parse_flags)


_HELP_FLAGS = ("--help", "-help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml")


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with errors cut to their last line (ml_collections embeds the
    traceback of an exception raised while loading the config file)."""
    try:
        return flags.FLAGS(argv)
    except SystemExit:
        # absl exits with status 1 after printing --help; asking for help is not an error.
        if any(a.split("=")[0] in _HELP_FLAGS for a in argv[1:]):
            sys.exit(0)
        raise
    except flags.Error as e:
        lines = [x for x in str(e).splitlines() if x.strip()]
        if any(x.startswith("Traceback") for x in lines):
            lines = [lines[0].split(":", 1)[0] + ": " + lines[-1].strip()]
        print("FATAL Flags parsing error: " + "\n".join(lines), file=sys.stderr)
        print("Pass --help to see the flags and presets.", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli()
