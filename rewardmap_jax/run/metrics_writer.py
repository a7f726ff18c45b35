"""Per-step metrics: `metrics.jsonl`, TensorBoard event files and a tqdm progress bar.

One `MetricsWriter` per run, used from the training loop on every process; only process 0
writes (the others are no-ops), so the loop needs no `if process_index == 0` of its own.

Record format (one JSON object per line of `<workdir>/metrics.jsonl`):

    {"step": 12, "time": 1732630000.1, "reward/mean": 3.2, "stage": 1, "loss": "nan",
     "nonfinite": ["loss"]}

Non-finite floats are written as the strings "nan", "inf", "-inf" (JSON has no NaN) and their
keys listed under "nonfinite"; `read_metrics` turns them back into floats. Strings (a stage
name, say) go to the JSONL only. After a resume, steps after the last checkpoint are logged a
second time; `read_metrics` merges the records of each step, later values winning.

Key names the plots, gallery and progress bar look for (the trainer should use them):
`reward/mean`, `accuracy/<task type>` and `accuracy/mean`, `stage` (curriculum stage index),
`stage_name`, `tokens_per_s`, `loss`.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_SUBDIR = "tensorboard"
DEFAULT_BAR_KEYS = ("reward/mean", "accuracy/mean", "stage_name", "stage", "tokens_per_s")
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _to_python(key: str, value: Any) -> float | int | str | bool:
    """A scalar metric as a plain Python value; arrays must hold exactly one element."""
    if isinstance(value, (str, bool)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    arr = np.asarray(jax.device_get(value))
    if arr.size != 1:
        raise ValueError(f"metric {key!r}: expected a scalar, got an array of shape {arr.shape}")
    item = arr.reshape(()).item()
    if isinstance(item, (bool, np.bool_)):
        return bool(item)
    if isinstance(item, numbers.Integral):
        return int(item)
    if isinstance(item, numbers.Real):
        return float(item)
    raise TypeError(f"metric {key!r}: unsupported value {value!r} of type {type(value).__name__}")


def _json_value(value: float | int | str | bool) -> float | int | str | bool:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


class MetricsWriter:
    """Writes scalar dicts per step to JSONL and TensorBoard and drives a progress bar.

    Args:
        workdir: run directory (created if needed).
        total_steps: the run's last step, for the bar's ETA (None = unknown).
        initial_step: the step the run (re)starts from, so the bar resumes where it was.
        tensorboard: also write TensorBoard event files to `<workdir>/tensorboard`.
        progress_bar: show a tqdm bar (on stderr); otherwise log one line every `log_every`.
        log_every: only every `log_every`-th step is written (non-finite steps always are).
        bar_keys: metric keys shown on the bar, when present.
        primary: whether this process writes; default `jax.process_index() == 0`.
    """

    def __init__(
        self,
        workdir: str | Path,
        *,
        total_steps: int | None = None,
        initial_step: int = 0,
        tensorboard: bool = True,
        progress_bar: bool = True,
        log_every: int = 1,
        bar_keys: Sequence[str] = DEFAULT_BAR_KEYS,
        primary: bool | None = None,
    ) -> None:
        if log_every < 1:
            raise ValueError(f"log.every_steps must be >= 1, got {log_every}")
        self.workdir = Path(workdir)
        self.primary = jax.process_index() == 0 if primary is None else primary
        self.log_every = log_every
        self.bar_keys = tuple(bar_keys)
        self.nonfinite_steps: list[int] = []
        self._file = None
        self._tb = None
        self._bar = None
        self._last_step = initial_step
        if not self.primary:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        _drop_torn_last_line(self.workdir / METRICS_FILE)
        self._file = (self.workdir / METRICS_FILE).open("a", encoding="utf-8")
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(logdir=str(self.workdir / TENSORBOARD_SUBDIR))
        if progress_bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True
            )

    @classmethod
    def from_config(
        cls, workdir: str | Path, cfg: Any, *, total_steps: int | None = None, initial_step: int = 0
    ) -> MetricsWriter:
        """From the `config.log` section (configs/curriculum.py)."""
        return cls(
            workdir,
            total_steps=total_steps,
            initial_step=initial_step,
            tensorboard=bool(cfg.tensorboard),
            progress_bar=bool(cfg.progress_bar),
            log_every=int(cfg.every_steps),
        )

    def write(
        self, step: int, metrics: Mapping[str, Any], *, force: bool = False
    ) -> dict[str, Any] | None:
        """Logs `metrics` (name -> scalar: Python, numpy or jax) for `step`.

        Returns the record written to the JSONL, or None when this process does not write or
        the step is skipped by `log_every` (`force=True`, e.g. for an evaluation, never is).
        Non-finite values are written, flagged under "nonfinite" and warned about; they never
        raise.
        """
        if not self.primary:
            return None
        values = {str(k): _to_python(str(k), v) for k, v in metrics.items()}
        bad = sorted(k for k, v in values.items() if isinstance(v, float) and not math.isfinite(v))
        self._advance_bar(step, values)
        if step % self.log_every and not bad and not force:
            return None
        record: dict[str, Any] = {"step": int(step), "time": time.time()}
        record.update({k: _json_value(v) for k, v in values.items()})
        if bad:
            record["nonfinite"] = bad
            self.nonfinite_steps.append(int(step))
            log.warning("step %d: non-finite metrics %s", step, {k: values[k] for k in bad})
        assert self._file is not None
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, global_step=int(step))
        if self._bar is None:
            log.info("step %d: %s", step, _summary(values, self.bar_keys))
        return record

    def _advance_bar(self, step: int, values: Mapping[str, Any]) -> None:
        if self._bar is None:
            return
        self._bar.update(max(0, step - self._last_step))
        self._last_step = max(self._last_step, step)
        self._bar.set_postfix_str(_summary(values, self.bar_keys), refresh=False)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _drop_torn_last_line(path: Path) -> None:
    """Cuts a partial last record (a run killed mid-write) so appends start on a fresh line."""
    if not path.exists():
        return
    with path.open("rb+") as f:
        size = f.seek(0, 2)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        # Find the last newline; everything after it is the torn record.
        pos = size - 1
        chunk = 4096
        while pos > 0:
            start = max(0, pos - chunk)
            f.seek(start)
            cut = f.read(pos - start).rfind(b"\n")
            if cut >= 0:
                pos = start + cut + 1
                break
            pos = start
        log.warning("%s: dropping a torn last record (%d bytes)", path, size - pos)
        f.truncate(pos)


def _summary(values: Mapping[str, Any], keys: Iterable[str]) -> str:
    parts = []
    for key in keys:
        if key in values:
            v = values[key]
            parts.append(f"{key}={v:.4g}" if isinstance(v, float) else f"{key}={v}")
    return " ".join(parts)


def read_metrics(workdir: str | Path) -> list[dict[str, Any]]:
    """The records of `<workdir>/metrics.jsonl`, one per step, sorted by step.

    Records of the same step are merged, later values winning (a resumed run re-logs the steps
    after its checkpoint; an evaluation may log separately at a training step).

    Non-finite markers become floats again. A torn last line (a run killed mid-write) is
    skipped with a warning; a bad line elsewhere raises with its line number.
    """
    path = Path(workdir) / METRICS_FILE
    if not path.exists():
        raise FileNotFoundError(f"no metrics file at {path}; has the run logged a step yet?")
    lines = path.read_text(encoding="utf-8").splitlines()
    by_step: dict[int, dict[str, Any]] = {}
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines):
                log.warning("%s:%d: skipping a truncated last line", path, i)
                continue
            raise ValueError(f"{path}:{i}: not a JSON record ({e})") from e
        if not isinstance(record, dict) or "step" not in record:
            raise ValueError(f"{path}:{i}: a record must be an object with a 'step'")
        for key in record.get("nonfinite", ()):
            if record.get(key) in _NONFINITE:
                record[key] = _NONFINITE[record[key]]
        # Several writes for one step (training metrics, then an evaluation) merge; a step
        # logged again after a resume overrides the values it logs again.
        merged = by_step.setdefault(int(record["step"]), {})
        merged.update(record)
        bad = sorted(k for k, v in merged.items() if isinstance(v, float) and not math.isfinite(v))
        if bad:
            merged["nonfinite"] = bad
        else:
            merged.pop("nonfinite", None)
    return [by_step[s] for s in sorted(by_step)]
