"""trainer.mixed_precision: set, it wins; unset (null), accelerate's launch setting decides."""

import pytest
import torch
from omegaconf import OmegaConf

from alignkit.app import build_accelerator, resolve_mixed_precision


def test_an_explicit_setting_wins_over_accelerate():
    assert resolve_mixed_precision("bf16", {"ACCELERATE_MIXED_PRECISION": "fp16"}) == "bf16"
    assert resolve_mixed_precision("no", {"ACCELERATE_MIXED_PRECISION": "bf16"}) == "no"


def test_unset_follows_accelerate_launch_else_full_precision():
    assert resolve_mixed_precision(None, {"ACCELERATE_MIXED_PRECISION": "BF16"}) == "bf16"
    assert resolve_mixed_precision(None, {}) == "no"


def test_unknown_values_name_where_they_came_from():
    with pytest.raises(ValueError, match=r"trainer.mixed_precision='fp8'.*'bf16', 'fp16', 'no'"):
        resolve_mixed_precision("fp8", {})
    with pytest.raises(ValueError, match=r"ACCELERATE_MIXED_PRECISION.*='int4'"):
        resolve_mixed_precision(None, {"ACCELERATE_MIXED_PRECISION": "int4"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is allowed on a GPU")
def test_fp16_from_accelerate_on_the_cpu_is_refused(monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    cfg = OmegaConf.create({"trainer": {"mixed_precision": None, "cpu": False}})
    with pytest.raises(ValueError, match="fp16 .* needs a GPU.*trainer.mixed_precision=no"):
        build_accelerator(cfg)
