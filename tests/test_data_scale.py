"""Data beyond memory: rows read by row group, a sharded cache built per process and
resumably, read row by row, and batches prefetched in background threads."""

import threading
from pathlib import Path

import pytest
import torch

import alignkit.data.cache_build as cache_build
from alignkit.config import DataConfig
from alignkit.data import CorruptDataError, build_pair_batches
from alignkit.data.cache import MANIFEST, CacheWriteError, cache_key, cache_root
from alignkit.data.cache_build import CachePlan, Encoding, build_shards
from alignkit.data.pairs import PreferencePairs
from alignkit.data.prefetch import Prefetcher
from alignkit.data.rows import ParquetRows
from alignkit.data.source import resolve_source
from alignkit.data.stores import cache_key_parts
from alignkit.data.transforms import PairTransform
from tests.helpers import FakeEncoder, caption_of, pair_rows, write_pair_folder


class CountingEncoder(FakeEncoder):
    """A ``FakeEncoder`` that also counts the images it encoded."""

    def __init__(self) -> None:
        super().__init__()
        self.images = 0

    def encode_images(self, pixels: torch.Tensor, generators=None) -> torch.Tensor:
        self.images += len(pixels)
        return super().encode_images(pixels, generators)


def data_config(path: Path | str, **overrides) -> DataConfig:
    cfg = DataConfig(name="test", path=str(path), random_flip=False, num_workers=0, latents="mode")
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def build(path, encoder=None, batch_size=4, **overrides):
    cfg = data_config(path, **overrides)
    return build_pair_batches(cfg, encoder or FakeEncoder(), 32, batch_size, 0)


def everything(batches):
    return batches.store.gather(list(range(batches.num_pairs)), epoch=0)


def assert_same_pairs(one, two) -> None:
    assert one.row_ids == two.row_ids and one.prompts == two.prompts
    assert torch.equal(one.latents_w, two.latents_w)
    assert torch.equal(one.latents_l, two.latents_l)
    assert torch.equal(one.micro_cond, two.micro_cond)
    assert one.text.keys() == two.text.keys()
    assert all(torch.equal(one.text[name], two.text[name]) for name in one.text)


def write_grouped_parquet(folder: Path, rows: int, group_rows: int, files: int = 2) -> Path:
    """``pair_rows(rows)`` in ``files`` parquet files with ``group_rows`` rows per row group."""
    frame = pair_rows(rows)
    per_file = rows // files
    for number in range(files):
        part = folder / f"{number:02d}.parquet"
        part.parent.mkdir(parents=True, exist_ok=True)
        chunk = frame.iloc[number * per_file : (number + 1) * per_file]
        chunk.to_parquet(part, index=False, row_group_size=group_rows)
    return folder


@pytest.fixture
def spied_row_group_reads(monkeypatch):
    """(file name, row group, columns) of every row group read from disk."""
    reads = []
    real = ParquetRows._read_group

    def spy(self, group, columns):
        reads.append((group.file.name, group.group, tuple(columns)))
        return real(self, group, columns)

    monkeypatch.setattr(ParquetRows, "_read_group", spy)
    return reads


# -- rows read on demand ------------------------------------------------------------------


def test_a_row_is_read_from_its_row_group_alone_and_labels_without_images(
    tmp_path, spied_row_group_reads
):
    folder = write_grouped_parquet(tmp_path / "pairs", rows=12, group_rows=4, files=2)
    rows = resolve_source(str(folder), "train").open(max_rows=None)
    assert rows.num_rows == 12 and len(rows.groups) == 4  # 6 rows a file: groups of 4 and 2
    label_0, label_1 = rows.labels()
    assert label_0.tolist()[:5] == [1.0, 1.0, 0.0, 1.0, 0.5] and len(label_1) == 12
    assert all(columns == ("label_0", "label_1") for _, _, columns in spied_row_group_reads)
    spied_row_group_reads.clear()
    [row] = rows.read([9])  # file 01, its row 3: the first row group of that file
    assert row.caption == caption_of(9)
    assert [(name, index) for name, index, _ in spied_row_group_reads] == [("01.parquet", 0)]
    assert "jpg_0" in spied_row_group_reads[0][2]
    rows.read([8, 5])  # row 8 is in the same row group (kept); 5 in the second of file 00
    assert [(name, index) for name, index, _ in spied_row_group_reads][1:] == [("00.parquet", 1)]


def test_max_rows_cuts_inside_a_row_group_of_a_later_file(tmp_path):
    folder = write_grouped_parquet(tmp_path / "pairs", rows=12, group_rows=4, files=2)
    rows = resolve_source(str(folder), "train").open(max_rows=9)
    assert rows.num_rows == 9 and len(rows.labels()[0]) == 9
    assert [row.caption for row in rows.read([8, 0])] == [caption_of(8), caption_of(0)]
    batches = build(folder, max_rows=9, drop_ties=False)
    assert sorted(everything(batches).row_ids) == list(range(9))


# -- the sharded cache --------------------------------------------------------------------


def test_many_small_shards_hold_the_same_pairs_as_one_shard(tmp_path):
    folder = write_pair_folder(tmp_path / "pairs", corrupt_rows=[7])
    one = build(folder, max_corrupt_fraction=0.2, cache_dir=str(tmp_path / "one"))
    many = build(folder, max_corrupt_fraction=0.2, shard_pairs=3, cache_dir=str(tmp_path / "m"))
    assert len(list((tmp_path / "m").glob("*/pairs-*.safetensors"))) == 4  # 11 pairs / 3
    assert many.num_pairs == one.num_pairs == 10 and 7 not in many.store.row_ids
    assert_same_pairs(everything(one), everything(many))
    positions = [9, 0, 5, 5]
    assert_same_pairs(one.store.gather(positions, 0), many.store.gather(positions, 0))


def test_a_batch_reads_only_the_shards_that_hold_its_rows(pair_folder, tmp_path):
    batches = build(pair_folder, shard_pairs=3, cache_dir=str(tmp_path / "cache"))
    [folder] = (tmp_path / "cache").iterdir()
    for shard in ("pairs-00001.safetensors", "pairs-00002.safetensors"):
        (folder / shard).unlink()
    batch = batches.store.gather([2, 0, 1], epoch=0)  # all in shard 0
    assert batch.row_ids == [2, 0, 1]
    with pytest.raises(FileNotFoundError):
        batches.store.gather([0, 4], epoch=0)  # position 4 lies in shard 1


def _cache_folder(cfg: DataConfig, encoder: FakeEncoder, seed: int = 0) -> Path:
    source = resolve_source(cfg.path, cfg.split)
    parts = cache_key_parts(cfg, source, encoder, 32, seed)
    return cache_root(cfg.cache_dir) / cache_key(parts)


def test_an_interrupted_build_resumes_and_equals_a_one_shot_build(
    pair_folder, tmp_path, monkeypatch
):
    settings = {"shard_pairs": 3, "cache_dir": str(tmp_path / "resumed")}
    real_write_shard, written = cache_build.write_shard, []

    def crash_after_two_shards(*args):
        if len(written) == 2:
            raise KeyboardInterrupt("simulated crash")
        written.append(args[0])
        real_write_shard(*args)

    monkeypatch.setattr(cache_build, "write_shard", crash_after_two_shards)
    with pytest.raises(KeyboardInterrupt):
        build(pair_folder, **settings)
    folder = _cache_folder(data_config(pair_folder, **settings), FakeEncoder())
    assert sorted(path.name for path in folder.glob("pairs-*")) == [
        "pairs-00000.safetensors",
        "pairs-00001.safetensors",
    ]
    assert not (folder / MANIFEST).exists() and not list(folder.glob(".*"))
    monkeypatch.setattr(cache_build, "write_shard", real_write_shard)
    encoder = CountingEncoder()
    resumed = build(pair_folder, encoder, **settings)
    assert encoder.images == 2 * 5  # shards 2 and 3 (positions 6..10), winner and loser
    one_shot = build(pair_folder, shard_pairs=3, cache_dir=str(tmp_path / "one-shot"))
    assert_same_pairs(everything(resumed), everything(one_shot))


def test_two_processes_build_half_the_shards_each_and_equal_one_process(pair_folder, tmp_path):
    settings = {"shard_pairs": 3, "cache_dir": str(tmp_path / "two")}
    cfg = data_config(pair_folder, **settings)
    second = CountingEncoder()
    source = resolve_source(cfg.path, cfg.split)
    pairs = PreferencePairs(source.open(None), cfg.drop_ties, source.describe())
    plan = CachePlan(_cache_folder(cfg, second), pairs.num_pairs, cfg.shard_pairs)
    encoding = Encoding(second, PairTransform(32, cfg.random_crop, cfg.random_flip), 0, 8)
    assert build_shards(plan, pairs, encoding, process_index=1, num_processes=2) == 2
    assert second.images == 2 * 5  # shards 1 and 3: positions 3..5 and 9..10
    assert not (plan.folder / MANIFEST).exists()
    first = CountingEncoder()
    two = build_pair_batches(cfg, first, 32, 4, 0, process_index=0, num_processes=2)
    assert first.images == 2 * 6  # shards 0 and 2; then it writes the index
    one = build(pair_folder, shard_pairs=3, cache_dir=str(tmp_path / "one"))
    assert_same_pairs(everything(two), everything(one))


def test_a_dataset_without_one_decodable_pair_is_one_clear_error(tmp_path):
    folder = write_pair_folder(tmp_path / "pairs", rows=4, tie_rows=(), corrupt_rows=range(4))
    with pytest.raises(CorruptDataError, match=r"none of the 4 pairs .* \[0, 1, 2, 3\]"):
        build(folder, shard_pairs=2, max_corrupt_fraction=1.0)


def test_an_unwritable_cache_folder_is_one_clear_error(pair_folder, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(CacheWriteError, match="could not write the latent cache.*data.cache_dir"):
        build(pair_folder, cache_dir=str(blocker))


def test_bad_shard_and_worker_settings_are_named(pair_folder):
    with pytest.raises(ValueError, match=r"data.shard_pairs=0 .*data.num_workers=-1"):
        build(pair_folder, shard_pairs=0, num_workers=-1)


# -- prefetch -----------------------------------------------------------------------------


def _recording_threads(batches) -> list[str]:
    names, gather = [], batches.store.gather

    def recorded(positions, epoch):
        names.append(threading.current_thread().name)
        return gather(positions, epoch)

    batches.store.gather = recorded
    return names


@pytest.mark.parametrize("cache", [True, False])
def test_prefetched_batches_equal_those_made_in_the_foreground(pair_folder, cache):
    settings = {"cache": cache, "caption_dropout": 0.3, "batch_size": 5}
    plain = build(pair_folder, **settings)
    prefetched = build(pair_folder, num_workers=2, **settings)
    threads = _recording_threads(prefetched)
    for index in range(16):  # 2 batches an epoch: workers run ahead into the next epochs
        assert_same_pairs(plain.batch(index), prefetched.batch(index))
    assert any(name.startswith("alignkit-data") for name in threads)


def test_prefetch_follows_this_process_s_stride_and_drops_wrong_guesses():
    made = []

    def fetch(index):
        made.append(index)
        return index * 10

    prefetcher = Prefetcher(fetch, workers=1, stride=2, ahead=2)
    assert prefetcher.get(1) == 10
    assert sorted(prefetcher._pending) == [3, 5]
    assert prefetcher.get(3) == 30 and sorted(prefetcher._pending) == [5, 7]
    assert prefetcher.get(20) == 200 and sorted(prefetcher._pending) == [22, 24]
    prefetcher._pending[22].result()
    assert 9 not in made and made.count(3) == 1


def test_an_error_in_a_prefetched_batch_surfaces_when_that_batch_is_asked_for():
    def fetch(index):
        if index == 2:
            raise ValueError("batch 2 is broken")
        return index

    prefetcher = Prefetcher(fetch, workers=2)
    assert prefetcher.get(0) == 0 and prefetcher.get(1) == 1
    with pytest.raises(ValueError, match="batch 2 is broken"):
        prefetcher.get(2)


# -- a hub dataset streamed ---------------------------------------------------------------


def test_a_streamed_hub_dataset_is_read_front_to_back_into_the_same_cache(pair_folder, monkeypatch):
    datasets = pytest.importorskip("datasets")
    frame = pair_rows()  # the rows of pair_folder
    opened = []

    def records():
        yield from frame.to_dict("records")

    def load_dataset(path, split, streaming=False):
        if not streaming:
            raise AssertionError("a streamed dataset must not be downloaded")
        opened.append(path)
        return datasets.IterableDataset.from_generator(records)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    streamed = build("someone/pairs", streaming=True, shard_pairs=3)
    assert len(opened) == 2  # one pass over the labels, one over the rows, in order
    assert_same_pairs(everything(streamed), everything(build(pair_folder, shard_pairs=3)))
    with pytest.raises(ValueError, match="data.streaming=true with data.cache=false"):
        build("someone/pairs", streaming=True, cache=False)
