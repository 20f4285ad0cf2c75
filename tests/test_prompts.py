"""The prompt batch source of online algorithms."""

import pytest

from alignkit.config import DataConfig
from alignkit.data import PromptBatches, build_batches, load_prompt_list
from alignkit.tinyworld import heldout_prompts, train_prompts


def test_tiny_splits_and_text_files_load(tmp_path):
    assert load_prompt_list("tiny_train") == train_prompts()
    assert load_prompt_list("tiny_heldout") == heldout_prompts()
    file = tmp_path / "prompts.txt"
    file.write_text("a cat\n\n  a dog  \n")
    assert load_prompt_list(str(file)) == ["a cat", "a dog"]


def test_missing_and_empty_prompt_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.txt"):
        load_prompt_list(str(tmp_path / "nowhere.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(ValueError, match="no prompts"):
        load_prompt_list(str(empty))


def test_each_epoch_visits_every_prompt_once_in_a_seeded_order():
    prompts = [f"p{i}" for i in range(10)]
    source = PromptBatches(prompts, batch_size=3, seed=7)
    assert source.batches_per_epoch == 3
    first_epoch = [p for i in range(3) for p in source.batch(i).prompts]
    assert len(set(first_epoch)) == 9
    second_epoch = [p for i in range(3, 6) for p in source.batch(i).prompts]
    assert second_epoch != first_epoch
    assert PromptBatches(prompts, 3, seed=7).batch(4).prompts == source.batch(4).prompts
    assert PromptBatches(prompts, 3, seed=8).batch(0).prompts != source.batch(0).prompts


def test_build_batches_dispatches_on_the_data_kind():
    cfg = DataConfig(name="tiny_prompts", kind="prompts", path="tiny_train", max_rows=8)
    source = build_batches(cfg, encoder=None, resolution=64, batch_size=4, seed=0)
    assert isinstance(source, PromptBatches) and len(source.prompts) == 8
    with pytest.raises(ValueError, match="fewer than one batch"):
        build_batches(cfg, encoder=None, resolution=64, batch_size=9, seed=0)
    with pytest.raises(ValueError, match="data.kind='video'"):
        build_batches(DataConfig(name="x", kind="video"), None, 64, 1, 0)
