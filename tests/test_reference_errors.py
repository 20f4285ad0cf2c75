"""DPO with ``algo.reference=precomputed``: the reference errors computed before training are
the live reference pass's, each step then runs the policy alone, and the stored errors survive
crashes, resumes and unreadable files."""

import errno
import json
import os
import signal

import pytest
import torch

from alignkit.algorithms import reference_errors
from alignkit.algorithms.dpo import DPOConfig
from alignkit.algorithms.errors import pair_errors
from alignkit.algorithms.reference_errors import FOLDER, ReferenceWriteError, batch_noise
from alignkit.checkpoint import list_checkpoints
from alignkit.losses import diffusion_dpo_loss
from alignkit.preemption import Preempted
from alignkit.sinks import JsonlSink
from tests.model_helpers import tiny_backbone, tiny_trainer

PRECOMPUTED = DPOConfig(name="dpo", beta=5000.0, reference="precomputed")


def _trainer(run_dir, **overrides):
    return tiny_trainer(tiny_backbone(), run_dir, algo=PRECOMPUTED, **overrides)


def _stored(folder) -> list[str]:
    return sorted(p.name for p in folder.glob("*.safetensors"))


def _count_reference_passes(trainer) -> dict[str, int]:
    """Count the backbone's policy and reference predictions from now on."""
    backbone, calls = trainer.backbone, {"policy": 0, "reference": 0}
    predict = backbone.predict

    def counted(*args, reference=False, **kwargs):
        calls["reference" if reference else "policy"] += 1
        return predict(*args, reference=reference, **kwargs)

    backbone.predict = counted
    return calls


def test_precomputed_loss_is_the_dpo_loss_with_a_live_reference_pass(tmp_path):
    trainer = _trainer(tmp_path, max_steps=2, grad_accum=2)
    trainer.prepare_algorithm()
    backbone, algorithm = trainer.backbone, trainer.algorithm
    assert sorted(algorithm.reference.precomputed.errors) == [0, 1, 2, 3]
    for index in range(4):
        batch = trainer.batches.batch(index)
        t, noise = batch_noise(backbone, batch.latents_w, trainer.seed, index)
        model_w, model_l, ref_w, ref_l = pair_errors(backbone, batch, t, noise)
        stored_w, stored_l = algorithm.reference.precomputed.lookup(index)
        assert torch.equal(stored_w, ref_w) and torch.equal(stored_l, ref_l)
        loss, metrics = algorithm.loss(batch, torch.Generator())
        expected = diffusion_dpo_loss(model_w, model_l, ref_w, ref_l, 5000.0)
        assert torch.equal(loss, expected)
        assert metrics["ref_mse_w"] == pytest.approx(ref_w.mean().item())


def test_micro_batches_sharing_a_pass_get_the_errors_of_separate_passes(tmp_path):
    alone = _trainer(tmp_path / "alone", max_steps=2, grad_accum=2)
    alone.prepare_algorithm()
    shared = tiny_trainer(
        tiny_backbone(),
        tmp_path / "shared",
        algo=DPOConfig(name="dpo", reference="precomputed", reference_micro_batches=3),
        max_steps=2,
        grad_accum=2,
    )
    calls = _count_reference_passes(shared)
    shared.prepare_algorithm()
    assert calls["reference"] == 2  # micro-batches 0-2, then 3
    for index in range(4):
        expected = alone.algorithm.reference.precomputed.errors[index]
        got = shared.algorithm.reference.precomputed.errors[index]
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_a_precomputed_step_runs_the_unet_once_per_micro_batch(tmp_path):
    live = tiny_trainer(tiny_backbone(), tmp_path / "live", grad_accum=2)
    live_calls = _count_reference_passes(live)
    live.train_step()
    assert live_calls == {"policy": 2, "reference": 2}

    precomputed = _trainer(tmp_path / "pre", grad_accum=2)
    calls = _count_reference_passes(precomputed)
    precomputed.prepare_algorithm()
    assert calls == {"policy": 0, "reference": 6}  # 3 steps x 2 micro-batches, ahead
    precomputed.train_step()
    assert calls == {"policy": 2, "reference": 6}


def test_noise_of_a_micro_batch_depends_on_its_index_and_seed_only():
    backbone = tiny_backbone()
    like = torch.zeros(3, 4, 8, 8)
    t, noise = batch_noise(backbone, like, seed=1, index=5)
    again_t, again_noise = batch_noise(backbone, like, seed=1, index=5)
    assert torch.equal(t, again_t) and torch.equal(noise, again_noise)
    assert not torch.equal(noise, batch_noise(backbone, like, seed=1, index=6)[1])
    assert not torch.equal(noise, batch_noise(backbone, like, seed=2, index=5)[1])


def test_crashed_run_resumes_from_the_stored_errors_to_the_uninterrupted_weights(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(reference_errors, "CHUNK", 2)
    settings = {"max_steps": 6, "checkpoint_every": 2}
    algo = DPOConfig(name="dpo", reference="precomputed", reference_micro_batches=2)

    def trainer(run_dir):
        return tiny_trainer(tiny_backbone(), run_dir, algo=algo, **settings)

    uninterrupted = trainer(tmp_path / "a")
    uninterrupted.fit([])

    crashing = trainer(tmp_path / "b")
    real_batch = crashing.batches.batch
    crashing.batches.batch = lambda index: real_batch(index) if index != 3 else 1 / 0
    with pytest.raises(ZeroDivisionError):
        crashing.fit([])  # in the pass of indices 2 and 3: the file of 0 and 1 is stored
    assert _stored(tmp_path / "b" / FOLDER) == ["0000000000-0000000001.safetensors"]

    resumed = trainer(tmp_path / "b")
    calls = _count_reference_passes(resumed)
    resumed.resume()
    resumed.fit([JsonlSink(tmp_path / "b" / "metrics.jsonl")])
    assert calls["reference"] == 2  # the passes of indices 2-3 and 4-5 only
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").open()]
    assert steps == [1, 2, 3, 4, 5, 6]
    expected = uninterrupted.backbone.trainable_state_dict()
    got = resumed.backbone.trainable_state_dict()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_an_unreadable_chunk_is_computed_again(tmp_path, caplog):
    first = _trainer(tmp_path)
    first.prepare_algorithm()
    (chunk,) = (tmp_path / FOLDER).glob("*.safetensors")
    expected = dict(first.algorithm.reference.precomputed.errors)
    chunk.write_bytes(b"not a safetensors file")
    (tmp_path / FOLDER / "9999999998-9999999999.safetensors").write_bytes(b"")

    second = _trainer(tmp_path)
    calls = _count_reference_passes(second)
    second.prepare_algorithm()
    assert calls["reference"] == 3
    assert "unreadable reference errors" in caplog.text
    for index, errors in expected.items():
        assert torch.equal(second.algorithm.reference.precomputed.errors[index], errors)
    assert _stored(tmp_path / FOLDER) == [chunk.name]  # rewritten whole


def test_a_full_disk_is_a_clear_error_that_keeps_the_stored_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(reference_errors, "CHUNK", 1)
    real_save = reference_errors.save_file
    saves = {"n": 0}

    def save_until_full(tensors, path):
        saves["n"] += 1
        if saves["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(tensors, path)

    monkeypatch.setattr(reference_errors, "save_file", save_until_full)
    trainer = _trainer(tmp_path)
    with pytest.raises(ReferenceWriteError, match="could not store reference errors .* free space"):
        trainer.prepare_algorithm()
    assert sorted(p.name for p in (tmp_path / FOLDER).iterdir()) == [
        "0000000000-0000000000.safetensors",
        "settings.json",
    ]  # no temporary left behind, the first chunk whole


def test_bad_reference_settings_name_the_value_and_the_choices():
    with pytest.raises(ValueError, match=r"algo.reference='cached' is unknown; choose live"):
        tiny_trainer(tiny_backbone(), "unused", algo=DPOConfig(name="dpo", reference="cached"))
    bad = DPOConfig(name="dpo", reference="precomputed", reference_micro_batches=0)
    with pytest.raises(ValueError, match=r"algo.reference_micro_batches=0 must be at least 1"):
        tiny_trainer(tiny_backbone(), "unused", algo=bad)


def test_a_step_before_the_errors_are_computed_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="not computed yet"):
        _trainer(tmp_path).train_step()


def test_steps_past_the_computed_ones_are_a_clear_error(tmp_path):
    trainer = _trainer(tmp_path, max_steps=1)
    trainer.prepare_algorithm()
    trainer.train_step()
    with pytest.raises(RuntimeError, match="no reference errors for micro-batch 1"):
        trainer.train_step()


def test_raising_max_steps_on_resume_computes_the_new_steps_only(tmp_path):
    _trainer(tmp_path, max_steps=2, checkpoint_every=1).fit([])
    longer = _trainer(tmp_path, max_steps=4)
    calls = _count_reference_passes(longer)
    assert longer.resume() == 2
    longer.fit([])
    assert calls == {"policy": 2, "reference": 2}
    assert sorted(longer.algorithm.reference.precomputed.errors) == [0, 1, 2, 3]


def _interrupt_at(trainer, index: int, interrupt) -> None:
    real_batch = trainer.batches.batch

    def batch(requested):
        if requested == index:
            interrupt()
        return real_batch(requested)

    trainer.batches.batch = batch


def test_sigterm_while_computing_keeps_the_finished_passes_and_resumes_exactly(tmp_path):
    uninterrupted = _trainer(tmp_path / "a", max_steps=6)
    uninterrupted.fit([])

    stopped = _trainer(tmp_path / "b", max_steps=6)
    _interrupt_at(stopped, 2, lambda: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(Preempted, match="SIGTERM after step 0"):
        stopped.fit([])  # the pass it was in finishes, then the run stops
    assert sorted(stopped.algorithm.reference.precomputed.errors) == [0, 1, 2]
    assert list_checkpoints(tmp_path / "b" / "checkpoints") == []  # nothing trained yet

    resumed = _trainer(tmp_path / "b", max_steps=6)
    calls = _count_reference_passes(resumed)
    resumed.fit([])
    assert calls["reference"] == 3
    expected = uninterrupted.backbone.trainable_state_dict()
    got = resumed.backbone.trainable_state_dict()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_ctrl_c_while_computing_stores_the_finished_passes_and_no_checkpoint(tmp_path):
    trainer = _trainer(tmp_path, max_steps=6)

    def ctrl_c():
        raise KeyboardInterrupt

    _interrupt_at(trainer, 2, ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit([])
    assert _stored(tmp_path / FOLDER) == ["0000000000-0000000001.safetensors"]
    assert list_checkpoints(tmp_path / "checkpoints") == []


def test_runs_naming_one_reference_dir_share_its_errors(tmp_path):
    shared = str(tmp_path / "shared")
    first = tiny_trainer(
        tiny_backbone(),
        tmp_path / "beta_5000",
        algo=DPOConfig(name="dpo", reference="precomputed", reference_dir=shared),
    )
    first.fit([])
    own_folder = _trainer(tmp_path / "own", max_steps=3)  # what a run computes on its own
    own_folder.prepare_algorithm()

    second = tiny_trainer(
        tiny_backbone(),
        tmp_path / "beta_2500",
        algo=DPOConfig(name="dpo", beta=2500.0, reference="precomputed", reference_dir=shared),
    )
    calls = _count_reference_passes(second)
    second.prepare_algorithm()
    assert calls["reference"] == 0
    for index, errors in own_folder.algorithm.reference.precomputed.errors.items():
        assert torch.equal(second.algorithm.reference.precomputed.errors[index], errors)
    assert not (tmp_path / "beta_2500" / FOLDER).exists()

    accumulating = tiny_trainer(  # the same micro-batches 0-2, one step of three
        tiny_backbone(),
        tmp_path / "accumulating",
        algo=DPOConfig(name="dpo", reference="precomputed", reference_dir=shared),
        max_steps=1,
        grad_accum=3,
    )
    calls = _count_reference_passes(accumulating)
    accumulating.prepare_algorithm()
    assert calls["reference"] == 0


def test_a_reference_dir_written_with_other_settings_is_refused(tmp_path):
    shared = str(tmp_path / "shared")
    algo = DPOConfig(name="dpo", reference="precomputed", reference_dir=shared)
    tiny_trainer(tiny_backbone(), tmp_path / "a", algo=algo, seed=0).prepare_algorithm()
    other_seed = tiny_trainer(tiny_backbone(), tmp_path / "b", algo=algo, seed=1)
    with pytest.raises(ValueError, match=r"computed with other settings \(seed: 0 -> 1\)"):
        other_seed.prepare_algorithm()
    (tmp_path / "shared" / "settings.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"settings.json is unreadable .* delete"):
        other_seed.prepare_algorithm()
