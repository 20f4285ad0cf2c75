"""trainer.compile: the UNet's training forward through torch.compile trains as the plain one."""

import pytest
import torch

from tests.model_helpers import tiny_backbone, tiny_trainer

#: The test compiles with AOTAutograd's eager backend: it captures the forward and backward
#: graphs as inductor does but skips inductor's code generation, with which the first
#: compilation of this model took about 7 minutes on 2 shared CPU cores (docs/performance.md).
#: Even so the test takes about 20 s of CPU time (90 s of wall time on a loaded machine).
TEST_BACKEND = "aot_eager"


def _two_step_losses(tmp_path, **settings) -> list[float]:
    trainer = tiny_trainer(tiny_backbone(), tmp_path, max_steps=2, **settings)
    return [trainer.train_step()["loss"] for _ in range(2)]


def test_compiled_unet_trains_with_the_losses_of_the_plain_one(tmp_path):
    torch._dynamo.reset()
    plain = _two_step_losses(tmp_path / "plain")
    graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    compiled = _two_step_losses(tmp_path / "compiled", compile=True, compile_backend=TEST_BACKEND)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs_before
    assert compiled == pytest.approx(plain, rel=1e-4, abs=1e-5)
    assert plain[1] != pytest.approx(plain[0], abs=1e-3)  # the first step changed the model


def test_unknown_compile_backend_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"unknown trainer.compile_backend='inductr'; choose"):
        tiny_trainer(tiny_backbone(), tmp_path, compile=True, compile_backend="inductr")
