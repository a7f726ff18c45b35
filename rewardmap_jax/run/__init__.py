"""Run bookkeeping: what a training or evaluation run leaves behind, and how its processes agree.

`distributed` (multi-host init, per-host batches), `checkpoint` (Orbax manager, preemption),
`metrics_writer` (JSONL, TensorBoard, progress bar), `plots` (reward/accuracy curves), `gallery`
(HTML pages of rollouts). Nothing here holds algorithm logic.
"""
