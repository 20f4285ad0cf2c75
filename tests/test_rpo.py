import math

import pytest
import torch

from alignkit.algorithms import build_algorithm
from alignkit.algorithms.errors import pair_errors
from alignkit.algorithms.reference_errors import batch_noise
from alignkit.algorithms.rpo import RPOConfig
from alignkit.algorithms.rpo_embeddings import combine
from alignkit.app import run
from alignkit.config import DataConfig
from alignkit.data import build_pair_batches
from alignkit.losses import rpo_loss
from alignkit.rewards.clip import ClipModel
from tests.helpers import compose_config
from tests.model_helpers import SyntheticPairs, tiny_backbone, tiny_trainer

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "patch_size": 16, "width": 32, "layers": 1, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    torch.manual_seed(0)
    return str(ClipModel.from_config(TINY_CLIP).save(tmp_path_factory.mktemp("clip") / "clip"))


def _rpo(backbone, clip_folder, **settings):
    return build_algorithm(RPOConfig(name="rpo", clip_path=clip_folder, **settings), backbone)


class CallCounter:
    """Counts CLIP image and text calls of an algorithm's embedding table."""

    def __init__(self, algorithm):
        self.calls = 0
        clip = algorithm.embeddings.clip
        for name in ("image_features", "text_features"):
            original = getattr(clip, name)
            setattr(clip, name, self._counting(original))

    def _counting(self, function):
        def counted(*args):
            self.calls += 1
            return function(*args)

        return counted


def _cached_batches(pair_folder, backbone, batch_size=3):
    cfg = DataConfig(name="pairs", path=str(pair_folder), random_flip=False, latents="mode")
    return build_pair_batches(cfg, backbone, resolution=32, batch_size=batch_size, seed=0)


def test_clip_runs_once_per_dataset_with_the_cache_and_never_per_step(pair_folder, clip_folder):
    backbone = tiny_backbone("sd")
    batches = _cached_batches(pair_folder, backbone)
    algorithm = _rpo(backbone, clip_folder)
    counter = CallCounter(algorithm)
    algorithm.prepare(batches)
    assert counter.calls > 0
    after_prepare = counter.calls
    generator = torch.Generator().manual_seed(0)
    for index in range(4):
        algorithm.loss(batches.batch(index), generator)
    assert counter.calls == after_prepare

    again = _rpo(tiny_backbone("sd"), clip_folder)  # a new run on the same cache: from disk
    reloaded = CallCounter(again)
    again.prepare(_cached_batches(pair_folder, tiny_backbone("sd")))
    assert reloaded.calls == 0
    batch = batches.batch(1)
    cached_w, cached_l = again.embeddings(batch)
    again.embeddings.table = None  # now embedded on the fly, as streaming data is
    fresh_w, fresh_l = again.embeddings(batch)
    assert reloaded.calls > 0
    assert torch.allclose(cached_w, fresh_w, atol=1e-5)
    assert torch.allclose(cached_l, fresh_l, atol=1e-5)


def test_rpo_at_init_is_log2_and_trains_the_adapter(clip_folder):
    backbone = tiny_backbone("sd")
    algorithm = _rpo(backbone, clip_folder, embedding="text")
    loss, metrics = algorithm.loss(SyntheticPairs(backbone, 3).batch(0), torch.Generator())
    # policy == reference (LoRA starts as the identity): every logit is 0, weights sum to one
    assert loss.item() == pytest.approx(math.log(2), rel=1e-5)
    assert 0 < metrics["rpo_weight_diag"] < 1
    loss.backward()
    grads = [p.grad for p in backbone.trainable_parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_rpo_shares_one_timestep_over_the_batch(clip_folder):
    backbone = tiny_backbone("sd")
    algorithm = _rpo(backbone, clip_folder)
    seen = []
    predict = backbone.predict

    def recording_predict(x, t, *args, **kwargs):
        seen.append(t.clone())
        return predict(x, t, *args, **kwargs)

    backbone.predict = recording_predict
    algorithm.loss(SyntheticPairs(backbone, 4).batch(0), torch.Generator().manual_seed(3))
    assert seen and all(len(set(t.tolist())) == 1 for t in seen)


@pytest.mark.parametrize("embedding", ["text", "image", "both"])
def test_rpo_runs_on_sdxl_with_every_embedding(clip_folder, embedding):
    backbone = tiny_backbone("sdxl")
    algorithm = _rpo(backbone, clip_folder, embedding=embedding, weight_placement="inside")
    loss, _ = algorithm.loss(SyntheticPairs(backbone, 2).batch(0), torch.Generator())
    loss.backward()
    assert torch.isfinite(loss)


def test_combined_embedding_is_the_sum_of_the_normalised_parts():
    text, image = torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 2.0]])
    assert combine(text, image, "both").tolist() == [[pytest.approx(0.6), pytest.approx(1.8)]]
    assert combine(text, image, "text").tolist() == [[pytest.approx(0.6), pytest.approx(0.8)]]
    assert combine(text, image, "image").tolist() == [[0.0, 1.0]]


def test_rpo_rejects_bad_settings_and_a_missing_clip(clip_folder, tmp_path):
    backbone = tiny_backbone("sd")
    with pytest.raises(ValueError, match=r"algo.embedding='pixels'.*algo.weight_placement"):
        _rpo(backbone, clip_folder, embedding="pixels", weight_placement="middle")
    with pytest.raises(ValueError, match="algo.tau=0"):
        _rpo(backbone, clip_folder, tau=0.0)
    with pytest.raises(ValueError, match="algo.clip_path"):
        _rpo(backbone, str(tmp_path / "no-clip"))


def test_a_run_embeds_the_cached_dataset_before_training(tmp_path, clip_folder, pair_folder):
    """``python -m alignkit algo=rpo``: the app calls ``prepare``; the table sits in the cache."""
    cfg = compose_config(
        "model=tiny_sd",
        "algo=rpo",
        f"algo.clip_path={clip_folder}",
        "data=pairs",
        f"data.path={pair_folder}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "trainer.max_steps=1",
        "trainer.batch_size=3",
        "trainer.progress_bar=false",
        f"output_dir={tmp_path / 'run'}",
    )
    assert run(cfg).train.step == 1
    assert len(list((tmp_path / "cache").glob("*/clip-*.safetensors"))) == 1


def test_precomputed_rpo_is_the_rpo_loss_with_one_unet_pass_per_step(clip_folder, tmp_path):
    backbone = tiny_backbone("sd")
    algorithm = _rpo(backbone, clip_folder, embedding="text", reference="precomputed")
    trainer = tiny_trainer(backbone, tmp_path, algo=algorithm.cfg, max_steps=2)
    trainer.algorithm = algorithm
    trainer.prepare_algorithm()
    batch = trainer.batches.batch(1)
    t, noise = batch_noise(backbone, batch.latents_w, trainer.seed, 1, one_timestep=True)
    assert len(set(t.tolist())) == 1  # RPO's one timestep per batch, drawn from the index
    model_w, model_l, ref_w, ref_l = pair_errors(backbone, batch, t, noise)
    emb_w, emb_l = algorithm.embeddings(batch)
    cfg = algorithm.cfg
    expected = rpo_loss(
        model_w, model_l, ref_w, ref_l, emb_w, emb_l, cfg.beta, cfg.tau, cfg.weight_placement
    )
    predict, calls = backbone.predict, []
    backbone.predict = lambda *a, **k: calls.append(k.get("reference", False)) or predict(*a, **k)
    loss, _ = algorithm.loss(batch, torch.Generator())
    assert torch.equal(loss, expected)
    assert calls == [False]  # the policy only
