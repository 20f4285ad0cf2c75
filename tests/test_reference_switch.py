"""The LoRA reference switch (``lora.adapters_disabled``) gives peft's adapter-free model."""

import pytest
import torch

from alignkit.models import lora as lora_lib
from alignkit.models.tiny import tiny_sd_components
from tests.model_helpers import PROMPTS, tiny_backbone


@pytest.fixture
def backbone():
    backbone = tiny_backbone()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # peft's gaussian init leaves B at zero: make the adapter matter
        for name, param in backbone.unet.named_parameters():
            if "lora_B" in name:
                param.copy_(0.5 * torch.randn(param.shape, generator=generator))
    return backbone


def _inputs(backbone):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((2, 4, 8, 8), generator=generator)
    return x, torch.tensor([10, 700]), backbone.encode_prompts(PROMPTS[:2])


def test_reference_equals_peft_disabled_model_and_differs_from_policy(backbone):
    x, t, text = _inputs(backbone)
    reference = backbone.predict(x, t, text, reference=True)
    backbone.unet.disable_adapters()
    with torch.no_grad():
        peft_off = backbone.predict(x, t, text)
    backbone.unet.enable_adapters()
    policy = backbone.predict(x, t, text)
    assert torch.equal(reference, peft_off)
    assert (policy - reference).abs().max() > 1e-3


def test_switch_restores_the_adapters_after_an_error(backbone):
    x, t, text = _inputs(backbone)
    with torch.no_grad():
        before = backbone.predict(x, t, text)
    with pytest.raises(RuntimeError, match="inside"), lora_lib.adapters_disabled(backbone.unet):
        raise RuntimeError("inside")
    with torch.no_grad():
        assert torch.equal(backbone.predict(x, t, text), before)


def test_switch_keeps_adapters_that_were_already_off(backbone):
    backbone.unet.disable_adapters()
    with lora_lib.adapters_disabled(backbone.unet):
        pass
    layers = [m for m in backbone.unet.modules() if hasattr(m, "lora_A")]
    assert layers and all(layer.disable_adapters for layer in layers)


def test_policy_still_trains_after_a_reference_pass(backbone):
    x, t, text = _inputs(backbone)
    lora_params = [p for n, p in backbone.unet.named_parameters() if "lora_" in n]
    backbone.predict(x, t, text, reference=True)
    assert all(p.requires_grad for p in lora_params)
    backbone.predict(x, t, text).pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_params)


def test_adapters_added_after_a_first_switch_are_switched_too(backbone):
    unet = tiny_sd_components().unet
    with lora_lib.adapters_disabled(unet):
        pass  # no adapters yet: the layer cache is empty
    lora_lib.add_lora(unet, backbone.cfg.lora)
    layers = [m for m in unet.modules() if hasattr(m, "lora_A")]
    with lora_lib.adapters_disabled(unet):
        assert layers and all(layer.disable_adapters for layer in layers)
    assert not any(layer.disable_adapters for layer in layers)
