"""The main CLI (flags, config errors, saving, dispatch), config helpers, launcher."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from configs import curriculum
from rewardmap_jax import config_utils

REPO = Path(__file__).resolve().parents[1]

# Runs main's CLI with a stand-in trainer that records what it was called with (in the workdir),
# so the CLI is tested end to end whether or not the real trainer exists yet.
_CLI_WITH_FAKE_TRAINER = textwrap.dedent(
    """
    import importlib.machinery, json, sys, types
    import jax
    from rewardmap_jax import main
    fake = types.ModuleType("fake_trainer")
    fake.__spec__ = importlib.machinery.ModuleSpec("fake_trainer", None)
    def run(config, workdir):
        with open(f"{workdir}/trainer_called_{jax.process_index()}.json", "w") as f:
            json.dump({"workdir": workdir, "num_generations": config.rl.num_generations,
                       "processes": jax.process_count()}, f)
    fake.run = run
    sys.modules["fake_trainer"] = fake
    main.TRAINER_MODULE = "fake_trainer"
    main.cli(["main"] + sys.argv[1:])
    """
)


# A stand-in trainer that resumes as the real one does: one step per start, restoring the
# latest Orbax checkpoint in the workdir main hands it (Orbax refuses relative paths).
_CLI_WITH_CHECKPOINTING_TRAINER = textwrap.dedent(
    """
    import importlib.machinery, sys, types
    import jax.numpy as jnp
    from rewardmap_jax import main
    from rewardmap_jax.run import checkpoint as ck
    fake = types.ModuleType("fake_trainer")
    fake.__spec__ = importlib.machinery.ModuleSpec("fake_trainer", None)
    def run(config, workdir):
        with ck.CheckpointManager(workdir, async_save=False, handle_preemption=False) as mgr:
            got = mgr.restore({"step": ck.abstract_like(jnp.int32(0))})
            step = 0 if got is None else int(got.state["step"])
            mgr.save(step + 1, {"step": jnp.int32(step + 1)}, data_state={"seen": step + 1})
        print(f"resumed from {step}, saved {step + 1} in {workdir}")
    fake.run = run
    sys.modules["fake_trainer"] = fake
    main.TRAINER_MODULE = "fake_trainer"
    main.cli(["main"] + sys.argv[1:])
    """
)


def _cli(
    *args: str, cwd: Path, fake_trainer: bool = True, script: str = _CLI_WITH_FAKE_TRAINER
) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-c", script] if fake_trainer else [
        sys.executable, "-m", "rewardmap_jax.main"
    ]  # fmt: skip
    return subprocess.run(
        cmd + list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_cli_saves_config_and_dispatches_to_trainer(tmp_path):
    out = _cli("--config.rl.num_generations=8", "--config.checkpoint.keep=5", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    workdir = tmp_path / "runs" / "tiny"  # the default workdir
    called = json.loads((workdir / "trainer_called_0.json").read_text())
    assert called == {"workdir": str(workdir), "num_generations": 8, "processes": 1}
    saved = json.loads((workdir / "config.json").read_text())
    expected = config_utils.config_to_dict(curriculum.get_config("tiny"))
    expected["rl"]["num_generations"] = 8
    expected["checkpoint"]["keep"] = 5
    assert saved == expected
    assert yaml.safe_load((workdir / "config.yaml").read_text()) == expected


def test_cli_preset_and_workdir(tmp_path):
    cfg = f"{REPO}/configs/curriculum.py:qwen2_5_vl_3b"
    out = _cli(f"--config={cfg}", f"--workdir={tmp_path / 'w'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    saved = config_utils.load_config(tmp_path / "w")
    assert saved.preset == "qwen2_5_vl_3b"
    # fp32 master weights, bf16 compute (bf16 params would lose lr-1e-6 updates).
    assert (saved.model.param_dtype, saved.model.compute_dtype) == ("float32", "bfloat16")


def test_cli_makes_every_relative_path_absolute(tmp_path):
    """A relative --workdir and relative paths in the config are resolved against the current
    directory once, in main: the trainer gets an absolute workdir and config.json holds absolute
    paths, so export/evaluate work from any directory. Empty values and "tiny" stay."""
    for d in ("models/qwen", "data/ReasonMap", "t"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "my_reward.py").write_text("def score(records, completions):\n    return {}\n")
    out = _cli(
        "--workdir=runs/rel", "--config.model.hf_dir=models/qwen",
        "--config.data.reasonmap_dir=data/ReasonMap", "--config.data.reasonmap_train_dir=./t",
        "--config.reward.fn=my_reward.py:score", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    workdir = tmp_path / "runs" / "rel"
    assert json.loads((workdir / "trainer_called_0.json").read_text())["workdir"] == str(workdir)
    saved = config_utils.load_config(workdir)
    assert saved.model.hf_dir == str(tmp_path / "models" / "qwen")
    assert saved.data.reasonmap_dir == str(tmp_path / "data" / "ReasonMap")
    assert saved.data.reasonmap_train_dir == str(tmp_path / "t")
    assert saved.reward.fn == f"{tmp_path / 'my_reward.py'}:score"
    assert saved.data.reasonmap_plus_dir == "" and saved.data.tokenizer == ""
    out = _cli("--workdir=runs/tok", "--config.data.tokenizer=tiny", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert config_utils.load_config(tmp_path / "runs" / "tok").data.tokenizer == "tiny"


def test_absolute_config_paths_helper(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config_utils.absolute_path("a/b") == str(tmp_path / "a" / "b")
    assert config_utils.absolute_path("gs://bucket/run") == "gs://bucket/run"
    assert config_utils.absolute_path("~") == os.path.expanduser("~")
    config = curriculum.get_config("tiny")
    config.data.tokenizer = "tok"
    config.reward.fn = "rewardmap"  # a registered name, not a path
    config_utils.absolute_config_paths(config)
    assert config.data.tokenizer == str(tmp_path / "tok") and config.reward.fn == "rewardmap"
    assert config.model.hf_dir == ""


def test_resume_with_a_relative_workdir(tmp_path):
    """The same command started twice with a relative --workdir: the second start restores the
    first one's Orbax checkpoint (which a relative path made Orbax refuse) and goes on."""
    args = ("--workdir", "runs/tiny", "--config.checkpoint.keep=5")
    for step in (1, 2):
        out = _cli(*args, cwd=tmp_path, script=_CLI_WITH_CHECKPOINTING_TRAINER)
        assert out.returncode == 0, out.stderr[-3000:]
        workdir = tmp_path / "runs" / "tiny"
        assert f"resumed from {step - 1}, saved {step} in {workdir}" in out.stdout
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["1", "2"]


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--config.rl.nope=3", "unknown config key 'nope' in --config.rl.nope=3"),
        ("--config.nosection.x=3", "unknown config key 'nosection'"),
        ("--config.rl.num_generations=abc", "--config.rl.num_generations=abc: invalid literal"),
        ("--config.rl.temperature=hot", "--config.rl.temperature=hot: could not convert"),
        ("--config.checkpoint.keep=0", "config.checkpoint.keep must be an integer >= 1, got 0"),
        (f"--config={REPO}/configs/curriculum.py:huge", "unknown preset 'huge'"),
        ("--workdir=gs://bucket/run", "invalid --workdir gs://bucket/run: a URL"),
        ("--config=/no/such/config.py", "No such file or directory: '/no/such/config.py'"),
        ("--config.model.hf_dir=no/such", "config.model.hf_dir: no directory '/"),
        ("--config.reward.fn=no_such.py:score", "config.reward.fn: no file '/"),
    ],
)
def test_cli_rejects_bad_config_before_compute(tmp_path, flag, message):
    out = _cli(flag, cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    # Nothing ran: the trainer was never called and (for flag errors) no workdir exists.
    assert not list(tmp_path.rglob("trainer_called_*.json"))


def test_help_lists_presets(tmp_path):
    out = _cli("--help", cwd=tmp_path, fake_trainer=False)
    assert out.returncode == 0
    text = out.stdout + out.stderr
    for preset in curriculum.PRESETS:
        assert preset in text
    assert "--config.rl.num_generations=8" in text  # the config docstring's examples
    assert "--workdir" in text


def test_config_helpers(tmp_path):
    config = curriculum.get_config("tiny")
    config_utils.validate_config(config)
    config.log.every_steps = 0
    config.eval.batch_size = True
    with pytest.raises(config_utils.ConfigError) as e:
        config_utils.validate_config(config)
    assert "config.log.every_steps must be an integer >= 1, got 0" in str(e.value)
    assert "config.eval.batch_size" in str(e.value)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        config_utils.load_config(tmp_path)
    config_utils.save_config(curriculum.get_config("tiny"), tmp_path)
    loaded = config_utils.load_config(tmp_path)
    assert loaded.rl.num_generations == curriculum.get_config("tiny").rl.num_generations
    with pytest.raises(AttributeError):
        loaded.rl.new_key = 1  # locked like the CLI's config
    text = config_utils.presets_help()
    assert "Presets: tiny, route, qwen2_5_vl_3b, qwen2_5_vl_7b (default tiny)" in text


@pytest.mark.slow
def test_local_launcher_runs_two_processes(tmp_path):
    workdir = tmp_path / "w"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [str(REPO / "launch" / "local.sh"), "2", sys.executable, "-c", _CLI_WITH_FAKE_TRAINER,
         f"--workdir={workdir}"],  # fmt: skip
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    for pid in (0, 1):
        called = json.loads((workdir / f"trainer_called_{pid}.json").read_text())
        assert called["processes"] == 2
    assert (workdir / "config.json").exists()
    # Logs come from process 0 only.
    assert "[0] I" in out.stderr and "config (preset tiny) saved" in out.stderr
    assert not any(
        line.startswith("[1]") and "saved to" in line for line in out.stderr.splitlines()
    )


_FAKE_GCLOUD = """#!/usr/bin/env bash
# Stands in for gcloud: records its arguments, runs --command= here (a one-worker "pod").
printf '%s\\n' "$@" > "$HOME/gcloud_args.txt"
for a in "$@"; do case "$a" in --command=*) cmd="${a#--command=}";; esac; done
cd "$HOME" && bash -c "$cmd"
"""
_FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for the venv's python: records argv and env, saves on SIGTERM.
printf '[%s]\\n' "$@" > "$HOME/python_args.txt"
echo "REWARDMAP_DISTRIBUTED=$REWARDMAP_DISTRIBUTED" >> "$HOME/python_args.txt"
trap 'echo got-TERM >> "$HOME/python_args.txt"; exit 0' TERM
sleep 20 & wait
"""


def test_tpu_launcher_quotes_flags_and_stops_by_pid(tmp_path):
    home, bin_dir = tmp_path / "home", tmp_path / "bin"
    venv_bin = home / "rewardmap-jax" / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    bin_dir.mkdir()
    for path, text in (
        (bin_dir / "gcloud", _FAKE_GCLOUD),
        (venv_bin / "python", _FAKE_PYTHON),
        (venv_bin / "activate", 'export PATH="$HOME/rewardmap-jax/.venv/bin:$PATH"\n'),
    ):
        path.write_text(text)
        path.chmod(0o755)
    env = dict(os.environ, HOME=str(home), PATH=f"{bin_dir}:{os.environ['PATH']}")
    launcher = str(REPO / "launch" / "tpu_pod.sh")
    tricky = "--config.data.system_prompt=You are a 'helpful' assistant; $HOME"
    run = subprocess.run(
        [launcher, "run", "my-tpu", "us-east5-a", "--workdir", "/mnt/runs/x", tricky],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    args = (home / "gcloud_args.txt").read_text().splitlines()
    assert args[:7] == ["alpha", "compute", "tpus", "tpu-vm", "ssh", "my-tpu", "--zone=us-east5-a"]
    assert "--worker=all" in args
    recorded = home / "python_args.txt"
    for _ in range(100):
        if recorded.exists() and "REWARDMAP" in recorded.read_text():
            break
        time.sleep(0.1)
    lines = recorded.read_text().splitlines()
    assert lines == [
        "[-m]", "[rewardmap_jax.main]", "[--workdir]", "[/mnt/runs/x]", f"[{tricky}]",
        "REWARDMAP_DISTRIBUTED=1",
    ]  # fmt: skip
    stop = subprocess.run(
        [launcher, "stop", "my-tpu", "us-east5-a"], env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert stop.returncode == 0, stop.stderr
    for _ in range(100):
        if "got-TERM" in recorded.read_text():
            break
        time.sleep(0.1)
    assert recorded.read_text().splitlines()[-1] == "got-TERM"


_FAKE_SRUN = """#!/usr/bin/env bash
# Stands in for srun + the trainer: records argv and env; on SIGTERM "saves" and exits 0.
printf '[%s]\\n' "$@" > srun_args.txt
echo "REWARDMAP_DISTRIBUTED=$REWARDMAP_DISTRIBUTED" >> srun_args.txt
trap 'kill $! 2>/dev/null; sleep 0.5; echo saved > checkpoint_marker; exit 0' TERM
echo started > started_marker
if [ "${FAKE_TRAIN_SECONDS:-0}" != 0 ]; then sleep "$FAKE_TRAIN_SECONDS" & wait; fi
"""
_FAKE_SCONTROL = """#!/usr/bin/env bash
# Records its arguments, and whether the checkpoint existed when it was called.
printf '%s\\n' "$@" > scontrol_args.txt
[ -f checkpoint_marker ] && echo checkpoint-before-requeue >> scontrol_args.txt
exit 0
"""


def _slurm_dir(tmp_path):
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "activate").write_text(f'export PATH="{tmp_path}/bin:$PATH"\n')
    (tmp_path / "bin").mkdir()
    for name, text in (("srun", _FAKE_SRUN), ("scontrol", _FAKE_SCONTROL)):
        (tmp_path / "bin" / name).write_text(text)
        (tmp_path / "bin" / name).chmod(0o755)
    return dict(os.environ, SLURM_SUBMIT_DIR=str(tmp_path), SLURM_JOB_ID="4242")


def test_slurm_script_runs_main_under_srun(tmp_path):
    env = _slurm_dir(tmp_path)
    script = (REPO / "launch" / "slurm.sbatch").read_text()
    sbatch = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --signal=B:TERM@300" in sbatch and "#SBATCH --ntasks-per-node=1" in sbatch
    assert "#SBATCH --requeue" in sbatch
    out = subprocess.run(
        ["bash", str(REPO / "launch" / "slurm.sbatch"), "--workdir", "/shared/a b"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "srun_args.txt").read_text().splitlines() == [
        "[--kill-on-bad-exit=1]", "[python]", "[-m]", "[rewardmap_jax.main]", "[--workdir]",
        "[/shared/a b]", "REWARDMAP_DISTRIBUTED=1",
    ]  # fmt: skip
    # a run that ends on its own is not requeued
    assert not (tmp_path / "scontrol_args.txt").exists()


def test_slurm_script_requeues_after_the_time_limit_checkpoint(tmp_path):
    """SLURM's --signal=B:TERM reaches the batch shell only: it must forward SIGTERM to the
    step, wait for the checkpoint, then `scontrol requeue` the job (dry run, fake srun)."""
    env = dict(_slurm_dir(tmp_path), FAKE_TRAIN_SECONDS="30")
    proc = subprocess.Popen(["bash", str(REPO / "launch" / "slurm.sbatch"), "--workdir", "/w"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(200):
            if (tmp_path / "started_marker").exists():
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert (tmp_path / "checkpoint_marker").read_text().strip() == "saved"
    assert (tmp_path / "scontrol_args.txt").read_text().splitlines() == [
        "requeue", "4242", "checkpoint-before-requeue"]
