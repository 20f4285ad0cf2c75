"""The real CLIP BPE tokenizer, built offline from the vocabulary file open_clip ships.

Tiny random-init models still need the true tokenizer (prompt handling, lengths, special
tokens must behave as at full scale), but nothing may be downloaded. open_clip carries the
same byte-pair merges that OpenAI's CLIP uses; from them we write the ``vocab.json`` and
``merges.txt`` that ``transformers.CLIPTokenizer`` reads. Token ids match OpenAI's tokenizer.
"""

from __future__ import annotations

import gzip
import json
import os
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer

from alignkit.durable import publish

#: The number of merges CLIP uses from the file (49152 tokens - 256 bytes - 2 specials).
_NUM_MERGES = 49152 - 256 - 2
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def _open_clip_bpe_path() -> Path:
    import open_clip

    return Path(os.path.dirname(open_clip.__file__)) / "bpe_simple_vocab_16e6.txt.gz"


def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """The CLIP vocabulary (token -> id) and its merges, in OpenAI's order."""
    with gzip.open(_open_clip_bpe_path()) as file:
        lines = file.read().decode("utf-8").split("\n")
    merges = lines[1 : _NUM_MERGES + 1]
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    tokens += ["".join(merge.split()) for merge in merges]
    tokens += [START_TOKEN, END_TOKEN]
    return {token: index for index, token in enumerate(tokens)}, merges


def write_clip_tokenizer_files(folder: str | os.PathLike) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` into ``folder`` and return it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab_and_merges()
    # processes that start together (one per GPU) share this folder: never half a file
    vocab_text = json.dumps(vocab, ensure_ascii=False)
    publish(folder / "vocab.json", lambda temporary: temporary.write_text(vocab_text))
    merges_text = "#version: 0.2\n" + "\n".join(merges) + "\n"
    publish(folder / "merges.txt", lambda temporary: temporary.write_text(merges_text))
    return folder


def _default_tokenizer_dir() -> Path:
    root = os.environ.get("ALIGNKIT_CACHE_DIR", os.path.join(Path.home(), ".cache", "alignkit"))
    return Path(root) / "clip_tokenizer"


@lru_cache(maxsize=4)
def offline_clip_tokenizer(pad_token: str = END_TOKEN, max_length: int = 77) -> CLIPTokenizer:
    """A ``CLIPTokenizer`` identical to OpenAI's, built without network access.

    ``pad_token``: SD1.5 and SDXL's first tokenizer pad with ``<|endoftext|>``; SDXL's second
    tokenizer pads with ``!``.
    """
    folder = _default_tokenizer_dir()
    if not (folder / "vocab.json").exists() or not (folder / "merges.txt").exists():
        write_clip_tokenizer_files(folder)
    return CLIPTokenizer.from_pretrained(
        str(folder),
        bos_token=START_TOKEN,
        eos_token=END_TOKEN,
        unk_token=END_TOKEN,
        pad_token=pad_token,
        model_max_length=max_length,
    )
