"""Shared pytest setup.

* Eight fake CPU devices, so sharding tests can build meshes (single-device tests still run on
    device 0 and are unaffected).
* fp32 matmuls at full precision: parity tests against `transformers` run in fp32.
* Under CI (`REWARDMAP_STRICT_DEPS=1`) a test skipped because a dependency is missing fails.
* One persistent XLA compilation cache for the whole session, this process and every
    subprocess it starts (the trainer, multi-host workers, scripts): many tests compile the
    same tiny programs, and a cache hit skips XLA's compilation, not JAX's tracing, so the
    tests' compile counts (trace counts, `_cache_size`) are unchanged. A directory given in
    `JAX_COMPILATION_CACHE_DIR` is used as is (kept); otherwise a temporary one is removed at the
    end. `REWARDMAP_TEST_COMPILE_CACHE=0` turns it off.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import jax
import pytest

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_default_matmul_precision", "highest")

_OWN_CACHE: str | None = None
if os.environ.get("REWARDMAP_TEST_COMPILE_CACHE", "1") != "0":
    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        _OWN_CACHE = tempfile.mkdtemp(prefix="rewardmap-jax-test-xla-cache-")
        os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
    # Environment, so that subprocesses inherit it; config, for this already-imported jax.
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_sessionfinish(session, exitstatus):
    if _OWN_CACHE:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)

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
