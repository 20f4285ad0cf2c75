import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from alignkit.config import DataConfig
from alignkit.data import (
    CorruptDataError,
    DataSourceError,
    PairBatches,
    SchemaError,
    build_pair_batches,
)
from alignkit.data.cache import MANIFEST, cache_root
from tests.helpers import (
    OTHER_GREEN,
    PREFERRED_GREEN,
    FakeEncoder,
    caption_of,
    gradient_image,
    pair_rows,
    row_red,
    text_embedding,
    write_pair_folder,
)


def data_config(path: Path | str, **overrides) -> DataConfig:
    """Latents are the pooled pixels themselves (``mode``) unless a test asks for samples."""
    cfg = DataConfig(name="test", path=str(path), random_flip=False, latents="mode")
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def build(path, encoder=None, resolution=32, batch_size=4, seed=0, **overrides) -> PairBatches:
    encoder = encoder or FakeEncoder()
    return build_pair_batches(data_config(path, **overrides), encoder, resolution, batch_size, seed)


def all_pairs(batches: PairBatches):
    """Every pair, in dataset order, as one batch (without caption dropout)."""
    return batches.store.gather(list(range(batches.num_pairs)), epoch=0)


def channel_mean(latents: torch.Tensor, channel: int) -> torch.Tensor:
    """Per-sample mean of a channel, back in 0..255 pixel units."""
    return (latents[:, channel].mean(dim=(1, 2)) + 1) * 127.5


def as_uint8(pixels: torch.Tensor) -> np.ndarray:
    return ((pixels + 1) * 127.5).round().to(torch.uint8).numpy()


# -- loading and schema -------------------------------------------------------------------


def test_missing_columns_are_named_with_the_expected_schema(tmp_path):
    folder = write_pair_folder(tmp_path / "pairs", missing_columns=["jpg_1", "label_1"])
    with pytest.raises(SchemaError) as error:
        build(folder)
    message = str(error.value)
    assert "lacks column(s) jpg_1, label_1" in message
    assert "expected the Pick-a-Pic schema" in message and "label_0  float" in message


def test_a_path_that_is_neither_local_nor_a_hub_id_is_rejected(tmp_path):
    with pytest.raises(DataSourceError, match="neither an existing file or folder nor a hub"):
        build(tmp_path / "no" / "such" / "folder")
    with pytest.raises(DataSourceError, match="data.path is not set"):
        build_pair_batches(DataConfig(name="test"), FakeEncoder(), 32, 4, 0)


def test_an_unreadable_parquet_file_and_a_dataset_of_ties_are_explained(tmp_path):
    folder = write_pair_folder(tmp_path / "pairs")
    (folder / "01" / "rows.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataSourceError, match="cannot read parquet file .*01/rows.parquet"):
        build(folder)
    ties = write_pair_folder(tmp_path / "ties", rows=3, tie_rows=[0, 1, 2])
    with pytest.raises(ValueError, match="no preference pairs: 3 rows, 3 of them ties"):
        build(ties)


def test_a_single_file_max_rows_and_image_dicts_are_read(tmp_path):
    folder = write_pair_folder(tmp_path / "pairs", files=1, images_as_dicts=True)
    batches = build(folder / "00" / "rows.parquet", max_rows=6, drop_ties=False)
    assert batches.num_pairs == 6
    assert sorted(all_pairs(batches).row_ids) == list(range(6))


# -- pair semantics -----------------------------------------------------------------------


@pytest.mark.parametrize("cache", [True, False])
def test_winner_comes_first_including_swapped_rows(pair_folder, cache):
    batch = all_pairs(build(pair_folder, cache=cache))
    assert 2 in batch.row_ids  # the row with label_1 > label_0
    assert torch.allclose(channel_mean(batch.latents_w, 1), torch.tensor(float(PREFERRED_GREEN)))
    assert torch.allclose(channel_mean(batch.latents_l, 1), torch.tensor(float(OTHER_GREEN)))
    reds = channel_mean(batch.latents_w, 0).round().int().tolist()
    assert reds == [row_red(row) for row in batch.row_ids]
    assert batch.prompts == [caption_of(row) for row in batch.row_ids]


def test_ties_are_dropped_and_counted_or_kept_in_given_order(pair_folder, caplog):
    with caplog.at_level(logging.INFO, logger="alignkit.data"):
        dropped = build(pair_folder)
    assert dropped.num_pairs == 11 and 4 not in all_pairs(dropped).row_ids
    assert "dropped 1 of 12 rows" in caplog.text
    kept = all_pairs(build(pair_folder, drop_ties=False))
    tie = kept.row_ids.index(4)
    assert channel_mean(kept.latents_w[tie : tie + 1], 1).item() == pytest.approx(PREFERRED_GREEN)


# -- transforms ---------------------------------------------------------------------------


@pytest.mark.parametrize("cache", [True, False])
def test_winner_and_loser_share_one_random_crop_and_flip(tmp_path, cache):
    folder = write_pair_folder(
        tmp_path / "pairs", sizes=[(16, 48), (48, 16)], make_image=gradient_image, tie_rows=()
    )
    batches = build(
        folder, FakeEncoder(pool=1), 16, cache=cache, random_crop=True, random_flip=True
    )
    batch = all_pairs(batches)
    winners, losers = as_uint8(batch.latents_w), as_uint8(batch.latents_l)
    assert (winners[:, :2] == losers[:, :2]).all()  # same view: red = column, green = line
    assert (winners[:, 2] == PREFERRED_GREEN).all() and (losers[:, 2] == OTHER_GREEN).all()
    flips, lefts, tops = set(), set(), set()
    for image, cond in zip(winners, batch.micro_cond.int().tolist()):
        top, left = cond[2], cond[3]
        columns = 5 * np.arange(left, left + 16)
        flipped = bool((image[0, 0] == columns[::-1]).all())
        assert flipped or (image[0, 0] == columns).all()
        assert (image[1, :, 0] == 5 * np.arange(top, top + 16)).all()
        flips.add(flipped)
        lefts.add(left)
        tops.add(top)
    assert flips == {True, False} and len(lefts) > 1 and len(tops) > 1


def test_micro_conditioning_records_original_size_crop_and_target(pair_folder):
    batch = all_pairs(build(pair_folder, resolution=32))
    expected = {
        (40, 48): [40, 48, 0, 3, 32, 32],  # 40x48 -> 32x38, centre crop at left 3
        (56, 40): [56, 40, 6, 0, 32, 32],  # 56x40 -> 45x32, centre crop at top 6
    }
    sizes = [(40, 48), (56, 40)]
    assert batch.micro_cond.dtype == torch.float32 and batch.micro_cond.shape[1:] == (6,)
    for row, cond in zip(batch.row_ids, batch.micro_cond.tolist()):
        assert cond == expected[sizes[row % 2]]
    assert batch.latents_w.shape[1:] == (3, 8, 8)


# -- corrupt images -----------------------------------------------------------------------


def test_a_corrupt_row_is_skipped_counted_and_warned_about(tmp_path, caplog):
    folder = write_pair_folder(tmp_path / "pairs", corrupt_rows=[7])
    with caplog.at_level(logging.WARNING, logger="alignkit.data"):
        batches = build(folder, max_corrupt_fraction=0.1)
    assert batches.num_pairs == 10 and 7 not in all_pairs(batches).row_ids
    assert "skipped 1 of 11 pairs" in caplog.text and "row ids [7]" in caplog.text


def test_too_many_corrupt_rows_stop_with_the_fraction_and_the_fix(tmp_path):
    folder = write_pair_folder(tmp_path / "pairs", corrupt_rows=[7])
    with pytest.raises(CorruptDataError) as error:
        build(folder)
    message = str(error.value)
    assert "1 of 11 pairs" in message and "(9.1%)" in message
    assert "max_corrupt_fraction=0.05" in message and "[7]" in message
    assert "data.max_corrupt_fraction=0.1" in message


def test_streaming_skips_corrupt_rows_and_stops_once_too_many_were_seen(tmp_path):
    folder = write_pair_folder(tmp_path / "pairs", corrupt_rows=[7], tie_rows=())
    tolerant = build(folder, cache=False, max_corrupt_fraction=0.1)
    seen = [row for index in range(3) for row in tolerant.batch(index).row_ids]
    assert 7 not in seen
    strict = build(folder, cache=False)
    with pytest.raises(CorruptDataError, match="1 of 12 pairs"):
        for index in range(3):
            strict.batch(index)


# -- the cache ----------------------------------------------------------------------------


def test_the_cache_is_reused_and_a_changed_key_recomputes(pair_folder, isolated_latent_cache):
    first_encoder = FakeEncoder()
    first = build(pair_folder, first_encoder, encode_batch_size=3)
    assert first_encoder.image_calls > 0 and first_encoder.largest_image_batch <= 3
    again_encoder = FakeEncoder()
    again = build(pair_folder, again_encoder)
    assert again_encoder.image_calls == 0 and again_encoder.prompt_calls == 0
    for index in range(4):
        one, two = first.batch(index), again.batch(index)
        assert torch.equal(one.latents_w, two.latents_w) and one.row_ids == two.row_ids
        assert torch.equal(one.text["prompt_embeds"], two.text["prompt_embeds"])
    other_encoder = FakeEncoder()
    build(pair_folder, other_encoder, resolution=16)
    assert other_encoder.image_calls > 0
    folders = sorted(isolated_latent_cache.iterdir())
    assert len(folders) == 2 and all((folder / MANIFEST).is_file() for folder in folders)


def test_the_cache_root_is_the_setting_else_the_environment_else_the_home_default(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("ALIGNKIT_CACHE_DIR", str(tmp_path / "env"))
    assert cache_root(str(tmp_path / "set")) == tmp_path / "set"
    assert cache_root(None) == tmp_path / "env"
    monkeypatch.delenv("ALIGNKIT_CACHE_DIR")
    assert cache_root(None) == Path.home() / ".cache" / "alignkit" / "latents"


def test_changed_data_files_change_the_cache_key(tmp_path):
    folder = write_pair_folder(tmp_path / "pairs")
    build(folder)
    write_pair_folder(folder, rows=16)
    encoder = FakeEncoder()
    assert build(folder, encoder).num_pairs == 15 and encoder.image_calls > 0


def test_an_unreadable_cache_is_rebuilt(pair_folder, isolated_latent_cache, caplog):
    build(pair_folder)
    for shard in isolated_latent_cache.glob("*/pairs-*.safetensors"):
        shard.write_bytes(b"garbage")
    encoder = FakeEncoder()
    with caplog.at_level(logging.WARNING, logger="alignkit.data"):
        build(pair_folder, encoder)
    assert encoder.image_calls > 0 and "cannot read the latent cache" in caplog.text


# -- batches ------------------------------------------------------------------------------


def test_batches_are_a_function_of_the_index_and_each_epoch_covers_every_pair(pair_folder):
    batches = build(pair_folder, drop_ties=False, batch_size=4)
    assert batches.batches_per_epoch == 3
    epochs = [
        [row for i in range(3 * e, 3 * e + 3) for row in batches.batch(i).row_ids] for e in (0, 1)
    ]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(12))
    assert epochs[0] != epochs[1]
    fresh = build(pair_folder, drop_ties=False, batch_size=4)
    for index in (4, 0, 7):
        assert fresh.batch(index).row_ids == batches.batch(index).row_ids
        assert torch.equal(fresh.batch(index).latents_l, batches.batch(index).latents_l)
    assert build(pair_folder, batch_size=4, seed=1).batch(0).row_ids != batches.batch(0).row_ids


def test_incomplete_last_batch_is_dropped_and_too_little_data_is_an_error(pair_folder):
    assert build(pair_folder, batch_size=4).batches_per_epoch == 2  # 11 pairs
    with pytest.raises(ValueError, match="11 usable pairs.*fewer than one batch of 12"):
        build(pair_folder, batch_size=12)


@pytest.mark.parametrize("cache", [True, False])
def test_caption_dropout_uses_the_empty_prompt_at_its_rate_and_deterministically(
    pair_folder, cache
):
    batches = build(pair_folder, caption_dropout=0.3, cache=cache, batch_size=5)
    empty = text_embedding("")
    dropped = total = 0
    for index in range(40):
        batch = batches.batch(index)
        for i, row in enumerate(batch.row_ids):
            is_dropped = batch.prompts[i] == ""
            expected = empty if is_dropped else text_embedding(caption_of(row))
            assert torch.allclose(batch.text["prompt_embeds"][i], expected)
            dropped += is_dropped
            total += 1
    assert 0.18 < dropped / total < 0.42
    again = build(pair_folder, caption_dropout=0.3, cache=cache, batch_size=5)
    assert again.batch(13).prompts == batches.batch(13).prompts


def test_streaming_batches_match_the_cached_ones_in_kind(pair_folder):
    cached = build(pair_folder).batch(0)
    encoder = FakeEncoder()
    streaming = build(pair_folder, encoder, cache=False)
    assert encoder.image_calls == 0
    streamed = streaming.batch(0)
    assert encoder.image_calls > 0
    assert streamed.latents_w.shape == cached.latents_w.shape
    assert streamed.text.keys() == cached.text.keys()
    assert streamed.micro_cond.shape == cached.micro_cond.shape
    assert streamed.row_ids == cached.row_ids  # same epoch order; only the views may differ


# -- hub datasets -------------------------------------------------------------------------


def test_an_unreachable_hub_says_nothing_can_be_downloaded(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(path, split):
        raise ConnectionError(f"Couldn't reach '{path}' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataSourceError) as error:
        build("nobody/no-such-pairs")
    assert "nothing can be downloaded" in str(error.value)
    assert "local folder of parquet files" in str(error.value)


def test_an_unknown_hub_id_and_a_missing_datasets_package_are_explained(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def not_found(path, split):
        raise datasets.exceptions.DatasetNotFoundError(f"Dataset '{path}' doesn't exist")

    monkeypatch.setattr(datasets, "load_dataset", not_found)
    with pytest.raises(DataSourceError, match="was not found.*no local file or folder"):
        build("nobody/no-such-pairs")
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataSourceError, match="pip install datasets"):
        build("nobody/no-such-pairs")


def test_a_hub_dataset_with_image_features_is_read(monkeypatch):
    datasets = pytest.importorskip("datasets")
    frame = pair_rows(rows=8, tie_rows=())
    features = datasets.Features(
        caption=datasets.Value("string"),
        jpg_0=datasets.Image(),
        jpg_1=datasets.Image(),
        label_0=datasets.Value("float32"),
        label_1=datasets.Value("float32"),
    )
    records = {
        "caption": list(frame["caption"]),
        **{side: [{"bytes": b, "path": None} for b in frame[side]] for side in ("jpg_0", "jpg_1")},
        "label_0": list(frame["label_0"]),
        "label_1": list(frame["label_1"]),
    }
    table = datasets.Dataset.from_dict(records, features=features)
    monkeypatch.setattr(datasets, "load_dataset", lambda path, split: table)
    for cache in (False, True):
        batch = all_pairs(build("someone/tiny-pairs", cache=cache))
        assert sorted(batch.row_ids) == list(range(8))
        green = channel_mean(batch.latents_w, 1)
        assert torch.allclose(green, torch.tensor(float(PREFERRED_GREEN)))

    def offline(path, split):
        raise ConnectionError("the hub is unreachable")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    assert build("someone/tiny-pairs").num_pairs == 8  # served from the cache, no hub needed


def test_sampled_latents_are_one_posterior_draw_per_row_kept_by_the_cache(pair_folder):
    mode = build(pair_folder).batch(0)
    first = build(pair_folder, latents="sample").batch(0)
    again = build(pair_folder, latents="sample").batch(0)
    assert first.row_ids == mode.row_ids
    noise_w, noise_l = first.latents_w - mode.latents_w, first.latents_l - mode.latents_l
    assert 0.5 < noise_w.std() < 1.5  # FakeEncoder's unit-normal posterior
    assert not torch.allclose(noise_w, noise_l)  # winner and loser draw apart
    torch.testing.assert_close(first.latents_w, again.latents_w)  # one draw per row
    torch.testing.assert_close(first.micro_cond, mode.micro_cond)  # crops are unchanged


def test_streamed_sampled_latents_draw_afresh_each_epoch(pair_folder):
    batches = build(pair_folder, latents="sample", cache=False)
    per_epoch = batches.batches_per_epoch
    rows = {}
    for index in (0, per_epoch):
        batch = batches.batch(index)
        for row, latent in zip(batch.row_ids, batch.latents_w):
            rows.setdefault(row, []).append(latent)
    repeated = [pair for pair in rows.values() if len(pair) == 2]
    assert repeated and all(not torch.allclose(a, b) for a, b in repeated)


def test_an_unknown_latents_choice_is_refused(pair_folder):
    with pytest.raises(ValueError, match="data.latents='median'"):
        build(pair_folder, latents="median")
