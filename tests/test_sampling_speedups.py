"""The sampling-loop speedups (``Backbone.sampling``) change no result, only the work done."""

from __future__ import annotations

import pytest
import torch
from peft.tuners.lora import Linear as LoRALinear

from alignkit.compiling import compiled
from alignkit.models.backbone import Backbone
from alignkit.models.lora import adapters_disabled
from alignkit.models.prepacked_weights import prepacked_weights, prepacking_available
from alignkit.models.text_key_values import cross_attention_projections, reused_text_key_values
from alignkit.pool_sampler import PoolConfig, PoolSampler
from alignkit.rollout import RolloutPlan, rollout
from alignkit.sampling import sample_with_log_probs
from tests.model_helpers import PROMPTS, tiny_backbone

needs_onednn = pytest.mark.skipif(not prepacking_available(), reason="no oneDNN in this torch")


def _randomize_lora(backbone: Backbone, seed: int = 0) -> None:
    """Non-zero adapters (lora_B starts at zero), so switching them off changes outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in backbone.trainable_parameters():
            param.copy_(0.3 * torch.randn(param.shape, generator=generator))


@pytest.fixture(autouse=True)
def _one_thread():
    """Identical kernels on both sides of each comparison."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- prepacked convolutions ------------------------------------------------------------------


def _count_calls(monkeypatch, owner: object, name: str) -> list[int]:
    """Count the calls of ``owner.name`` (a weight-packing op) for the rest of the test."""
    calls = [0]
    original = getattr(owner, name)

    def counted(*args):
        calls[0] += 1
        return original(*args)

    monkeypatch.setattr(owner, name, counted)
    return calls


def _count_reorders(monkeypatch) -> list[int]:
    return _count_calls(monkeypatch, torch._C._nn, "mkldnn_reorder_conv2d_weight")


def _count_linear_packs(monkeypatch) -> list[int]:
    return _count_calls(monkeypatch, torch.ops.mkldnn, "_reorder_linear_weight")


@needs_onednn
@pytest.mark.parametrize(
    "conv",
    [
        torch.nn.Conv2d(8, 16, 3, padding=1),
        torch.nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False),
        torch.nn.Conv2d(8, 8, 1),
        torch.nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4),
    ],
    ids=["3x3", "strided-no-bias", "1x1", "dilated-grouped"],
)
def test_prepacked_convolution_equals_the_plain_one_and_packs_once_per_shape(conv, monkeypatch):
    torch.manual_seed(0)
    small, large = torch.randn(2, 8, 6, 6), torch.randn(3, 8, 10, 10)
    with torch.no_grad():
        expected = conv(small), conv(large)
    reorders = _count_reorders(monkeypatch)
    with torch.no_grad(), prepacked_weights([conv]):
        got = [conv(small) for _ in range(3)] + [conv(large), conv(large)]
    assert reorders[0] == 2  # one per input shape, not one per call
    for out in got[:3]:
        torch.testing.assert_close(out, expected[0], atol=1e-5, rtol=1e-5)
    for out in got[3:]:
        torch.testing.assert_close(out, expected[1], atol=1e-5, rtol=1e-5)
    assert "forward" not in conv.__dict__


@needs_onednn
@pytest.mark.parametrize("channels_last", [False, True])
def test_a_convolution_over_a_2x2_or_1x1_map_is_one_packed_product(channels_last, monkeypatch):
    conv = torch.nn.Conv2d(8, 16, 3, padding=1)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    maps = [torch.randn(4, 8, s, s).contiguous(memory_format=layout) for s in (2, 1)]
    with torch.no_grad():
        expected = [conv(x) for x in maps]
    reorders, packs = _count_reorders(monkeypatch), _count_linear_packs(monkeypatch)
    with torch.no_grad(), prepacked_weights([conv]):
        got = [conv(x) for x in maps + maps]
    assert reorders[0] == 0 and packs[0] == 2  # one dense matrix per map size
    for out, want in zip(got, expected + expected):
        torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)


@needs_onednn
def test_a_weight_changed_in_place_is_packed_again(monkeypatch):
    conv = torch.nn.Conv2d(4, 4, 3, padding=1)
    x = torch.randn(1, 4, 5, 5)
    reorders = _count_reorders(monkeypatch)
    with torch.no_grad(), prepacked_weights([conv]):
        before = conv(x)
        conv.weight.mul_(-2.0)
        after = conv(x)
        plain = torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1)
    assert reorders[0] == 2
    torch.testing.assert_close(after, plain, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(before, after)


@needs_onednn
def test_gradients_take_the_plain_convolution(monkeypatch):
    conv = torch.nn.Conv2d(4, 4, 3, padding=1)
    x = torch.randn(1, 4, 5, 5, requires_grad=True)
    reorders = _count_reorders(monkeypatch)
    with prepacked_weights([conv]):
        conv(x).square().sum().backward()
    assert reorders[0] == 0
    assert conv.weight.grad is not None and x.grad is not None


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
def test_prepacked_linear_equals_the_plain_one_and_packs_once_per_row_count(bias, monkeypatch):
    linear = torch.nn.Linear(12, 20, bias=bias)
    tokens, rows = torch.randn(2, 7, 12), torch.randn(5, 12)
    with torch.no_grad():
        expected = linear(tokens), linear(rows)
    packs = _count_linear_packs(monkeypatch)
    with torch.no_grad(), prepacked_weights([linear]):
        got = linear(tokens), linear(tokens), linear(rows)
    assert packs[0] == 2
    torch.testing.assert_close(got[0], expected[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], expected[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[2], expected[1], atol=1e-5, rtol=1e-5)


def _first_lora_layer(backbone: Backbone) -> LoRALinear:
    return next(m for m in backbone.unet.modules() if isinstance(m, LoRALinear))


def _count_adapter_calls(layer: LoRALinear) -> list[int]:
    calls = [0]
    layer.lora_A["default"].register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@needs_onednn
def test_a_lora_layer_runs_as_one_product_with_its_adapter_on_or_off(monkeypatch):
    backbone = tiny_backbone()
    _randomize_lora(backbone)
    layer = _first_lora_layer(backbone)
    x = torch.randn(3, 5, layer.in_features)
    with torch.no_grad():
        on = layer(x)
        with adapters_disabled(backbone.unet):
            off = layer(x)
    adapter_calls, packs = _count_adapter_calls(layer), _count_linear_packs(monkeypatch)
    with torch.no_grad(), prepacked_weights([backbone.unet]):
        got_on = [layer(x), layer(x)]
        with adapters_disabled(backbone.unet):
            got_off = layer(x)
    assert adapter_calls[0] == 0  # W + scale B A in one product
    assert packs[0] == 2  # adapter on, adapter off
    for got in got_on:
        torch.testing.assert_close(got, on, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_off, off, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(on, off)


@needs_onednn
def test_a_lora_layer_with_active_dropout_keeps_peft_forward():
    backbone = tiny_backbone()
    layer = _first_lora_layer(backbone)
    layer.lora_dropout["default"] = torch.nn.Dropout(0.5).train()
    adapter_calls = _count_adapter_calls(layer)
    with torch.no_grad(), prepacked_weights([backbone.unet]):
        layer(torch.randn(3, 5, layer.in_features))
    assert adapter_calls[0] == 1


def test_a_forward_set_on_the_instance_is_put_back():
    conv = torch.nn.Conv2d(4, 4, 1)
    hooked = conv.forward
    conv.forward = hooked  # what accelerate's hooks leave on a module
    with torch.no_grad(), prepacked_weights([conv]):
        assert conv.__dict__["forward"] is not hooked
    assert conv.__dict__["forward"] is hooked


# -- reused text keys and values ---------------------------------------------------------------


def _count_projections(unet: torch.nn.Module) -> list[int]:
    """Count the projections' own computations (an instance forward the speedups wrap)."""
    calls = [0]

    def counted(forward):
        def forward_counted(x):
            calls[0] += 1
            return forward(x)

        return forward_counted

    for projection in cross_attention_projections(unet):
        projection.forward = counted(projection.forward)
    return calls


def _policy_twice_then_reference_twice(backbone: Backbone) -> list[torch.Tensor]:
    text = backbone.encode_prompts(PROMPTS[:2])
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([500, 300])
    return [
        backbone.predict(latents, t, text, reference=reference)
        for reference in (False, True)
        for latents in (x, 0.5 * x)
    ]


def test_text_keys_and_values_are_projected_once_per_adapter_state():
    backbone = tiny_backbone()
    _randomize_lora(backbone)
    projections = len(cross_attention_projections(backbone.unet))
    calls = _count_projections(backbone.unet)
    with torch.no_grad():
        expected = _policy_twice_then_reference_twice(backbone)
    assert calls[0] == 4 * projections
    with torch.no_grad(), reused_text_key_values([backbone.unet]):
        got = _policy_twice_then_reference_twice(backbone)
    assert calls[0] == 4 * projections + 2 * projections  # adapters on, then off
    for out, want in zip(got, expected):
        torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got[0], got[2])  # the reference (adapters off) really differs


def test_changed_text_or_weights_are_projected_again():
    backbone = tiny_backbone()
    projection = cross_attention_projections(backbone.unet)[0]
    text = torch.randn(2, 77, projection.in_features)
    linear = torch.nn.functional.linear
    with torch.no_grad(), reused_text_key_values([backbone.unet]):
        projection(text)
        text.add_(1.0)
        changed_text, expected_text = projection(text), linear(text, projection.weight)
        projection.weight.mul_(2.0)
        changed_weight, expected_weight = projection(text), linear(text, projection.weight)
    torch.testing.assert_close(changed_text, expected_text)
    torch.testing.assert_close(changed_weight, expected_weight)
    assert not torch.allclose(changed_text, changed_weight)


def test_gradients_take_the_plain_projection():
    backbone = tiny_backbone()
    calls = _count_projections(backbone.unet)
    text = backbone.encode_prompts(PROMPTS[:2])
    x, t = torch.randn(2, 4, 4, 4), torch.tensor([500, 300])
    with reused_text_key_values([backbone.unet]):
        backbone.predict(x, t, text)
        backbone.predict(x, t, text)
    assert calls[0] == 2 * len(cross_attention_projections(backbone.unet))


# -- whole sampling loops ----------------------------------------------------------------------


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_sampled_trajectory_and_log_probs_are_unchanged(family):
    backbone = tiny_backbone(family)
    _randomize_lora(backbone)

    def run():
        generator = torch.Generator().manual_seed(0)
        return sample_with_log_probs(backbone, PROMPTS[:2], [0, 1], generator, steps=6)

    backbone.cfg.sampling_speedups = False  # model.sampling_speedups=false
    expected = run()
    backbone.cfg.sampling_speedups = True
    got = run()
    torch.testing.assert_close(got.latents, expected.latents, atol=1e-4, rtol=1e-4)
    # the last step lands on alpha = 1 (sigma 0), whose log-density is NaN on both sides
    torch.testing.assert_close(
        got.log_probs, expected.log_probs, atol=1e-3, rtol=1e-4, equal_nan=True
    )


def test_spo_pool_round_is_unchanged():
    backbone = tiny_backbone()
    _randomize_lora(backbone)
    sampler = PoolSampler(
        backbone,
        lambda images, prompts, timesteps: images.mean(dim=(1, 2, 3)),
        PoolConfig(k=3, threshold=0.0, steps=6, divert_start_step=2),
    )
    backbone.cfg.sampling_speedups = False  # model.sampling_speedups=false
    expected = sampler.sample(PROMPTS[:2], torch.Generator().manual_seed(0))
    backbone.cfg.sampling_speedups = True
    got = sampler.sample(PROMPTS[:2], torch.Generator().manual_seed(0))
    torch.testing.assert_close(got.scores, expected.scores, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.final_latents, expected.final_latents, atol=1e-4, rtol=1e-4)
    for name, tensor in expected.transitions.tensors().items():
        torch.testing.assert_close(got.transitions.tensors()[name], tensor, atol=1e-4, rtol=1e-4)


def test_rollout_gradients_are_unchanged():
    backbone = tiny_backbone()
    _randomize_lora(backbone)
    noise = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    plan = RolloutPlan(steps=4, stop=4, grad_steps=(2, 3), detach_inputs=True)

    def gradients() -> list[torch.Tensor]:
        backbone.unet.zero_grad()
        result = rollout(backbone, PROMPTS[:2], noise, plan, guidance=3.0)
        result.latents.square().mean().backward()
        return [p.grad.clone() for p in backbone.trainable_parameters()]

    backbone.cfg.sampling_speedups = False  # model.sampling_speedups=false
    expected = gradients()
    backbone.cfg.sampling_speedups = True
    got = gradients()
    for grad, want in zip(got, expected):
        torch.testing.assert_close(grad, want, atol=1e-5, rtol=1e-4)
    assert any(grad.abs().sum() > 0 for grad in got)


@needs_onednn
def test_switched_off_or_compiled_the_layers_are_left_alone():
    """Swapped layer forwards would make torch.compile recompile at every SPO round."""
    backbone = tiny_backbone()
    conv, projection = backbone.unet.conv_in, cross_attention_projections(backbone.unet)[0]
    with backbone.sampling():
        assert "forward" in conv.__dict__ and "forward" in projection.__dict__
    backbone.cfg.sampling_speedups = False
    with backbone.sampling():
        assert "forward" not in conv.__dict__ and "forward" not in projection.__dict__
    backbone.cfg.sampling_speedups = True
    backbone.unet_forward = compiled(backbone.unet, "aot_eager")
    with backbone.sampling():
        assert "forward" not in conv.__dict__ and "forward" not in projection.__dict__


@needs_onednn
def test_the_vae_encoder_keeps_its_layers_for_prefetch_threads():
    """Threads encoding images meanwhile (data.cache=false) must get the same latents."""
    backbone = tiny_backbone()
    with backbone.sampling():
        assert "forward" in backbone.vae.decoder.conv_in.__dict__
        assert "forward" not in backbone.vae.encoder.conv_in.__dict__
