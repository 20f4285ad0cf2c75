"""Watching training (eval.every): grids and reward means in the run folder, TensorBoard and
wandb, checked against samples recomputed from the run's own checkpoints."""

import io
import json

import numpy
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from alignkit.app import run
from alignkit.checkpoint import load_checkpoint
from alignkit.config import EvalConfig
from alignkit.data import load_prompt_list
from alignkit.data.general_prompts import GENERAL_PROMPTS
from alignkit.evaluation import image_grid
from alignkit.models import build_backbone
from alignkit.registry import UnknownNameError
from alignkit.rewards import build_reward
from alignkit.sampling import generate_images
from alignkit.sinks import JsonlSink
from alignkit.tinyworld import heldout_prompts
from alignkit.tinyworld.assets import asset_path
from alignkit.watch import build_watch, check_watch_settings, watch_prompts
from tests.helpers import compose_config
from tests.model_helpers import tiny_backbone
from tests.wandb_records import history

#: Two held-out prompts x two seeds, two DDIM steps, scored by the judge, every 2 steps.
WATCHED = (
    "eval.every=2",
    "eval.every_prompts=2",
    "eval.every_seeds=2",
    "eval.steps=2",
    "eval.rewards=[oracle]",
    "eval.enabled=false",
)
TINY_DPO = (
    "data.max_rows=8",
    "data.cache=false",
    "trainer.batch_size=2",
    "trainer.progress_bar=false",
)


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _pixels(image: Image.Image) -> numpy.ndarray:
    return numpy.asarray(image.convert("RGB"))


def _samples(backbone, reference: bool) -> torch.Tensor:
    """The watch's images, recomputed: prompts 0-1 of tiny_heldout x seeds 0-1."""
    prompts = [p for p in heldout_prompts()[:2] for _ in range(2)]
    return generate_images(backbone, prompts, [0, 1, 0, 1], steps=2, reference=reference)


def _oracle(images: torch.Tensor) -> float:
    prompts = [p for p in heldout_prompts()[:2] for _ in range(2)]
    return build_reward("oracle")(images, prompts).float().mean().item()


def test_grid_and_scores_reach_the_run_folder_and_tensorboard(tmp_path):
    run_dir = tmp_path / "run"
    cfg = compose_config(
        *TINY_DPO,
        *WATCHED,
        "trainer.max_steps=4",
        "trainer.log_every=3",
        "trainer.checkpoint_every=2",
        "logger=tensorboard",
        f"output_dir={run_dir}",
    )
    run(cfg)
    rows = _rows(run_dir)
    # watched steps are logged even where log_every=3 skips them
    assert [row["step"] for row in rows] == [2, 3, 4]
    assert "eval/oracle" not in rows[1]

    backbone = build_backbone(cfg.model)
    base = _samples(backbone, reference=True)
    policies = {}
    for step, row in ((2, rows[0]), (4, rows[2])):
        contents = load_checkpoint(run_dir / "checkpoints" / f"step_{step:08d}")
        backbone.load_trainable_state_dict(contents.trainable)
        policies[step] = _samples(backbone, reference=False)
        assert row["eval/oracle"] == pytest.approx(_oracle(policies[step]), rel=1e-5)
        assert row["eval/oracle_base"] == pytest.approx(_oracle(base), rel=1e-5)
        expected = _pixels(image_grid(base, policies[step], rows=2, cols=2))
        written = _pixels(Image.open(run_dir / "samples" / f"step_{step:08d}.png"))
        assert numpy.array_equal(written, expected)
    assert not torch.equal(policies[2], policies[4])  # the grid follows training

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    images = events.Images("samples")
    assert [event.step for event in images] == [2, 4]
    for event in images:
        logged = Image.open(io.BytesIO(event.encoded_image_string))
        written = Image.open(run_dir / "samples" / f"step_{event.step:08d}.png")
        assert numpy.array_equal(_pixels(logged), _pixels(written))
    scalars = {event.step: event.value for event in events.Scalars("eval/oracle")}
    assert scalars == pytest.approx({2: rows[0]["eval/oracle"], 4: rows[2]["eval/oracle"]})
    assert [event.step for event in events.Scalars("loss")] == [2, 3, 4]


def test_watching_does_not_change_the_trained_weights(tmp_path):
    finals = []
    for every in (0, 1):
        run_dir = tmp_path / f"every{every}"
        cfg = compose_config(
            *TINY_DPO,
            *WATCHED,
            "trainer.max_steps=2",
            f"eval.every={every}",
            f"output_dir={run_dir}",
        )
        finals.append(load_file(run(cfg).train.final_dir / "pytorch_lora_weights.safetensors"))
    assert finals[0].keys() == finals[1].keys()
    assert all(torch.equal(finals[0][key], finals[1][key]) for key in finals[0])
    assert (tmp_path / "every1" / "samples" / "step_00000001.png").is_file()
    assert not (tmp_path / "every0" / "samples").exists()


def test_drtune_reward_and_the_watch_reach_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    cfg = compose_config(
        "experiment=drtune_tiny",
        *WATCHED,
        "algo.steps=2",
        "algo.train_steps=1",
        "trainer.max_steps=2",
        "trainer.batch_size=2",
        "trainer.progress_bar=false",
        "logger=wandb",
        f"output_dir={run_dir}",
    )
    run(cfg)
    rows = _rows(run_dir)
    logged = history(run_dir)
    assert sorted(logged) == [1, 2]
    for row in rows:  # DRTune's reward curve, step by step
        assert logged[row["step"]]["reward"] == pytest.approx(row["reward"])
    assert "eval/oracle" not in logged[1] and "samples.path" not in logged[1]
    assert logged[2]["eval/oracle"] == pytest.approx(rows[1]["eval/oracle"])
    assert logged[2]["eval/oracle_base"] == pytest.approx(rows[1]["eval/oracle_base"])
    assert logged[2]["samples._type"] == "image-file"
    media = next((run_dir / "wandb").glob("offline-run-*")) / "files" / logged[2]["samples.path"]
    written = Image.open(run_dir / "samples" / "step_00000002.png")
    assert numpy.array_equal(_pixels(Image.open(media)), _pixels(written))


def test_spo_scores_reach_tensorboard(tmp_path):
    run_dir = tmp_path / "run"
    cfg = compose_config(
        "experiment=tiny_spo",
        "eval.enabled=false",
        "algo.steps=3",
        "algo.divert_start_step=1",
        "algo.k=2",
        "algo.train_batch_size=2",
        "trainer.max_steps=2",
        "trainer.batch_size=2",
        "logger=tensorboard",
        f"output_dir={run_dir}",
    )
    run(cfg)
    rows = _rows(run_dir)
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    for name in ("spm_score_mean", "round_pairs", "loss"):
        logged = {event.step: event.value for event in events.Scalars(name)}
        assert logged == pytest.approx({row["step"]: row[name] for row in rows})


def test_jsonl_sink_writes_images_beside_the_metrics(tmp_path):
    sink = JsonlSink(tmp_path / "metrics.jsonl")
    picture = Image.fromarray(numpy.arange(48, dtype=numpy.uint8).reshape(4, 4, 3))
    sink.log_image(12, "samples", picture)
    sink.close()
    written = Image.open(tmp_path / "samples" / "step_00000012.png")
    assert numpy.array_equal(_pixels(written), _pixels(picture))


def test_the_watch_samples_the_configured_prompts_or_the_general_set():
    tiny = compose_config().eval  # the tiny world's config names its held-out prompts
    assert watch_prompts(tiny) == heldout_prompts()[:4]
    real = compose_config("model=sd15").eval  # a real model's config names none
    assert real.prompts is None
    assert watch_prompts(real) == list(GENERAL_PROMPTS[:4])
    general = load_prompt_list("general")
    assert general == list(GENERAL_PROMPTS) and len(set(general)) == 12


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        ({"every": -1}, ValueError, "eval.every=-1"),
        ({"every": 2, "every_prompts": 0}, ValueError, "eval.every_prompts=0"),
        ({"every": 2, "every_seeds": 0}, ValueError, "eval.every_seeds=0"),
        ({"every": 2, "rewards": ["oracel"]}, UnknownNameError, "'oracel'"),
    ],
)
def test_bad_watch_settings_are_named(settings, error, message):
    with pytest.raises(error, match=message):
        check_watch_settings(EvalConfig(prompts="tiny_heldout", **settings))


def test_a_reward_given_with_its_folder_logs_under_its_name():
    clip = f"tiny_clip@{asset_path('clip')}"
    cfg = EvalConfig(prompts="tiny_heldout", every=1, every_prompts=1, every_seeds=1, steps=1)
    cfg.rewards = [clip]
    watch = build_watch(cfg, tiny_backbone("sd"), [])
    assert set(watch(1)) == {"eval/tiny_clip", "eval/tiny_clip_base"}


def test_a_reward_with_its_folder_passes_the_check():
    check_watch_settings(EvalConfig(prompts="general", every=5, rewards=["pickscore@/models/ps"]))
    with pytest.raises(UnknownNameError, match="'pikscore'"):
        check_watch_settings(EvalConfig(prompts="general", every=5, rewards=["pikscore@/m"]))


def test_a_missing_prompt_file_stops_the_run_before_training(tmp_path):
    cfg = compose_config(
        *TINY_DPO,
        *WATCHED,
        f"eval.prompts={tmp_path / 'nowhere.txt'}",
        f"output_dir={tmp_path / 'run'}",
    )
    with pytest.raises(FileNotFoundError, match="nowhere.txt"):
        run(cfg)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # before the sinks and the model
