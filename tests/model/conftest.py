"""Shared transformers reference models, saved once per session to temp dirs."""

from __future__ import annotations

import pytest

from tests.model import hf_reference as ref


@pytest.fixture(scope="session")
def hf_untied(tmp_path_factory):
    """(torch model, saved dir) with an untied head (canonical on-disk layout)."""
    model = ref.hf_model(tie=False)
    d = tmp_path_factory.mktemp("hf_untied")
    model.save_pretrained(d)
    return model, str(d)


@pytest.fixture(scope="session")
def hf_tied(tmp_path_factory):
    """(torch model, saved dir) with a tied head (no lm_head.weight on disk)."""
    model = ref.hf_model(tie=True, seed=1)
    d = tmp_path_factory.mktemp("hf_tied")
    model.save_pretrained(d)
    return model, str(d)
