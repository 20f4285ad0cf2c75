"""Style alignment in the tiny world: DPO on winter pairs makes the samples colder."""

from alignkit.app import run
from tests.helpers import compose_config


def test_dpo_on_winter_pairs_raises_the_winter_score_of_heldout_samples(tmp_path):
    cfg = compose_config(
        "data=tiny_style_pairs",
        "data.style=winter",
        f"output_dir={tmp_path}",
        "trainer.max_steps=60",
        "trainer.lr=1e-3",
        "trainer.checkpoint_every=1000",
        "trainer.progress_bar=false",
        "eval.seeds_per_prompt=1",
        "eval.steps=10",
        "eval.rewards=[style_winter]",
    )
    winter = run(cfg).evaluation["rewards"]["style_winter"]
    # measured: 0.106 -> 0.233 in 44 s on 2 busy cores (200 steps at the default lr 4e-4 and
    # the full evaluation: 0.085 -> 0.165, docs/style_alignment.md); the pairs' winners: 0.437
    assert winter["aligned"] > winter["base"] + 0.06
