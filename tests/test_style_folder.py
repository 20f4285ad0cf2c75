"""Style pairs from a folder of (original, styled) images: data=style_pairs data.path=/folder."""

from pathlib import Path

import numpy as np
import pytest

from alignkit.config import DataConfig
from alignkit.data import DataSourceError, build_pair_batches, resolve_source
from alignkit.data.style_folder import StyleFolder
from tests.helpers import FakeEncoder, compose_config, encode_image

NAMES = ("cat", "bridge", "apple")
CAPTIONS = {"cat": "a cat on a sofa", "bridge": "a bridge at night", "apple": "an apple"}


def flat(value: int) -> np.ndarray:
    return np.full((16, 16, 3), value, np.uint8)


def write_style_folder(root: Path) -> Path:
    """Originals are grey 40 (PNG), styled images grey 200 (JPEG); one extra caption line."""
    (root / "original").mkdir(parents=True)
    (root / "styled").mkdir()
    for name in NAMES:
        (root / "original" / f"{name}.png").write_bytes(encode_image(flat(40)))
        (root / "styled" / f"{name}.jpg").write_bytes(encode_image(flat(200), "JPEG"))
    (root / "original" / "notes.txt").write_text("not an image")
    lines = [f"{name}\t{CAPTIONS[name]}" for name in NAMES] + ["", "unused\ta caption"]
    (root / "captions.tsv").write_text("\n".join(lines) + "\n")
    return root


def test_a_style_folder_becomes_pairs_with_the_styled_image_preferred(tmp_path):
    root = write_style_folder(tmp_path / "van_gogh")
    source = resolve_source(str(root), "train")
    assert isinstance(source, StyleFolder)
    table = source.table(max_rows=None).to_pydict()
    assert table["caption"] == [CAPTIONS[name] for name in sorted(NAMES)]
    assert table["jpg_0"] == [(root / "styled" / f"{n}.jpg").read_bytes() for n in sorted(NAMES)]
    assert table["jpg_1"] == [(root / "original" / f"{n}.png").read_bytes() for n in sorted(NAMES)]
    assert table["label_0"] == [1.0] * 3 and table["label_1"] == [0.0] * 3
    assert source.table(max_rows=2).num_rows == 2


def test_the_pipeline_trains_on_the_styled_image_as_winner(tmp_path):
    root = write_style_folder(tmp_path / "sketches")
    cfg = DataConfig(name="style_pairs", path=str(root), random_flip=False, latents="mode")
    batches = build_pair_batches(cfg, FakeEncoder(pool=4), resolution=16, batch_size=3, seed=0)
    batch = batches.batch(0)
    # pixels in [-1, 1]: grey 200 -> 0.569 (winner), grey 40 -> -0.686 (loser); JPEG is near
    assert batch.latents_w.mean().item() == pytest.approx(200 / 127.5 - 1, abs=0.02)
    assert batch.latents_l.mean().item() == pytest.approx(40 / 127.5 - 1, abs=1e-6)


def test_compose_style_pairs_takes_the_folder(tmp_path):
    cfg = compose_config("model=tiny_sd", "data=style_pairs", f"data.path={tmp_path}")
    assert cfg.data.path == str(tmp_path) and cfg.data.kind == "pairs"


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda root: (root / "captions.tsv").unlink(), "has no captions.tsv"),
        (lambda root: (root / "styled" / "cat.jpg").unlink(), r"styled lacks the image\(s\) cat"),
        (lambda root: (root / "original" / "apple.png").unlink(), "original lacks .* apple"),
        (
            lambda root: (root / "styled" / "cat.png").write_bytes(b"x"),
            "two images named 'cat'",
        ),
        (
            lambda root: (root / "captions.tsv").write_text("cat a cat\n"),
            "line 1 is not NAME<tab>prompt",
        ),
        (
            lambda root: (root / "captions.tsv").write_text("cat\tA\nbridge\tB\n"),
            "no line for apple",
        ),
        (
            lambda root: (root / "captions.tsv").write_text("cat\tA\ncat\tB\n"),
            "gives 'cat' twice",
        ),
    ],
)
def test_a_broken_folder_names_what_to_fix(tmp_path, damage, message):
    root = write_style_folder(tmp_path / "styles")
    damage(root)
    with pytest.raises(DataSourceError, match=message):
        resolve_source(str(root), "train")


def test_a_folder_with_only_styled_images_asks_for_originals(tmp_path):
    (tmp_path / "styled").mkdir()
    with pytest.raises(DataSourceError, match="has no original/ folder; a style folder holds"):
        resolve_source(str(tmp_path), "train")
