"""The SPM training recipe on tiny random models: shared noise, x0 from the frozen UNet,
the PickScore loss falls, accuracy counts only decided pairs, and the result reloads."""

import dataclasses

import pytest
import torch

from alignkit.rewards.clip import ClipModel
from alignkit.rewards.spm import TINY_CLIP_CONFIG, StepAwarePreferenceModel, read_state_dict
from alignkit.spm import (
    PairTensors,
    pair_inputs,
    pairwise_accuracy,
    split_by_prompt,
    train_spm,
)
from tests.model_helpers import tiny_backbone

PROMPTS = ["a red circle", "a blue square", "a green star", "a white moon"]


def _pairs() -> PairTensors:
    generator = torch.Generator().manual_seed(0)
    return PairTensors(
        torch.rand(4, 3, 32, 32, generator=generator),
        torch.rand(4, 3, 32, 32, generator=generator),
        torch.tensor([1.0, 0.0, 0.5, 1.0]),
        torch.tensor([0.0, 1.0, 0.5, 0.0]),
        PROMPTS,
    )


def _spm() -> StepAwarePreferenceModel:
    torch.manual_seed(0)
    return StepAwarePreferenceModel.from_clip(ClipModel.from_config(TINY_CLIP_CONFIG))


def test_both_images_of_a_pair_share_the_noise():
    backbone = tiny_backbone()
    pairs = _pairs()
    same = PairTensors(pairs.images_0, pairs.images_0, pairs.label_0, pairs.label_1, PROMPTS)
    t = torch.full((4,), 500)
    image_0, image_1 = pair_inputs(backbone, same, t, torch.Generator().manual_seed(0), 5.0)
    torch.testing.assert_close(image_0, image_1)  # identical inputs -> identical x0_hat


def test_spm_training_lowers_the_loss_and_the_result_reloads(tmp_path):
    backbone = tiny_backbone()
    spm = _spm()
    losses = train_spm(
        spm, backbone, _pairs(), steps=12, batch_size=4, lr=1e-3, guidance=5.0, seed=0,
        adapter_lr=1e-2,
    )  # fmt: skip
    assert sum(losses[-3:]) < sum(losses[:3])
    spm.save_adapter(tmp_path)
    spm.save_base_clip(tmp_path / "clip")
    reloaded = StepAwarePreferenceModel.from_clip(ClipModel.from_folder(tmp_path / "clip"))
    reloaded.load_weights(read_state_dict(tmp_path))
    images, t = _pairs().images_0, torch.tensor([0, 100, 500, 900])
    spm.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded.score(images, PROMPTS, t), spm.score(images, PROMPTS, t), atol=1e-4, rtol=1e-4
        )


def test_pairwise_accuracy_counts_decided_pairs_only():
    backbone = tiny_backbone()
    pairs = _pairs()

    def prefers_first(images, prompts, timesteps):  # scores image_0 above image_1 always
        n = len(images) // 2
        return torch.cat([torch.ones(n), torch.zeros(n)])

    prefers_first.score = prefers_first
    # 3 decided pairs, of which 2 prefer image 0: the tie does not count
    assert pairwise_accuracy(prefers_first, backbone, pairs, 500, 5.0) == 2 / 3


def test_split_by_prompt_keeps_prompts_on_one_side():
    pairs = PairTensors(
        torch.zeros(40, 3, 2, 2), torch.zeros(40, 3, 2, 2), torch.ones(40), torch.zeros(40),
        [f"prompt {i % 10}" for i in range(40)],
    )  # fmt: skip
    train, heldout = split_by_prompt(pairs, 0.3)
    assert len(train) + len(heldout) == 40 and len(heldout) > 0
    assert not set(train.prompts) & set(heldout.prompts)


def test_concat_keeps_each_pair_whole_and_in_order():
    pairs = _pairs()
    both = pairs.concat(pairs.select(torch.tensor([2, 0])))
    assert both.prompts == PROMPTS + [PROMPTS[2], PROMPTS[0]]
    assert torch.equal(both.images_1[4], pairs.images_1[2])
    assert both.label_0.tolist() == [1.0, 0.0, 0.5, 1.0, 0.5, 1.0]


def test_concat_after_encoding_is_refused():
    pairs = _pairs()
    latents = torch.zeros(4, 4, 2, 2)
    encoded = dataclasses.replace(pairs, latents_0=latents, latents_1=latents)
    with pytest.raises(ValueError, match="before encode_pairs"):
        pairs.concat(encoded)
