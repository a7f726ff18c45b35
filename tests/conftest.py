"""Shared pytest setup.

* Eight fake CPU devices, so sharding tests can build meshes (single-device tests still run on
    device 0 and are unaffected).
* fp32 matmuls at full precision: parity tests against `transformers` run in fp32.
* Under CI (`REWARDMAP_STRICT_DEPS=1`) a test skipped because a dependency is missing fails.
"""

from __future__ import annotations

import os

import jax
import pytest

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_default_matmul_precision", "highest")

_MISSING_DEP_MARKERS = ("could not import", "no module named", "not installed")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("REWARDMAP_STRICT_DEPS") != "1" or not report.skipped:
        return
    reason = str(report.longrepr).lower()
    if any(marker in reason for marker in _MISSING_DEP_MARKERS):
        report.outcome = "failed"
        report.longrepr = f"skipped for a missing dependency (fails under CI): {report.longrepr}"
