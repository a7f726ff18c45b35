"""A SIGTERM delivered while the first evaluation batch is decoded (the real signal path)."""

from __future__ import annotations

import os
import signal

from rewardmap_jax.rl import rollout as ro


def sigterm_during_first_batch(monkeypatch) -> list[int]:
    """Wraps `rollout.sample` so that its first call sends this process SIGTERM; returns the
    list that records one entry per call (the number of batches decoded)."""
    calls: list[int] = []
    real = ro.sample

    def sample(*args, **kw):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kw)

    monkeypatch.setattr(ro, "sample", sample)
    return calls
