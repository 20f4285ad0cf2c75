"""Where a model, file or prompt list named in the config lives: this machine, or the hub.

Every real-model part (a diffusers model, an SPM checkpoint, a CLIP, a prompt list) is named
by one string that is either a local path or a remote name:

* a model repository ``owner/name`` (diffusers, transformers),
* a file inside a hub repository ``owner/name/path/in/repo.ext``,
* an ``https://`` URL (the SPO authors' prompt list lives on GitHub).

Remote parts are downloaded once into the usual caches when the hub can be reached, and read
from those caches when it cannot (``HF_HUB_OFFLINE=1``, or no network).
"""

from __future__ import annotations

import hashlib
import os
import socket
import urllib.error
import urllib.request
from functools import cache
from pathlib import Path
from urllib.parse import urlparse

from alignkit.durable import publish

#: Seconds to wait when probing whether the hub answers at all (only asked when a remote part
#: is not in the cache yet).
PROBE_TIMEOUT_S = 3.0
DOWNLOAD_TIMEOUT_S = 60.0


def is_url(spec: str) -> bool:
    return spec.startswith(("https://", "http://"))


def is_local(spec: str) -> bool:
    """A path meant for this machine: it exists, or it is written as a path."""
    if is_url(spec):
        return False
    return os.path.exists(os.path.expanduser(spec)) or spec.startswith((".", "/", "~"))


def split_hub_file(spec: str) -> tuple[str, str]:
    """``owner/name/path/in/repo`` -> (``owner/name``, ``path/in/repo``)."""
    parts = spec.split("/")
    if len(parts) < 3 or not all(parts):
        raise ValueError(
            f"{spec!r} is neither a local file nor a hub file (owner/name/file-in-repo)"
        )
    return "/".join(parts[:2]), "/".join(parts[2:])


def offline_by_setting() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


@cache
def hub_reachable() -> bool:
    """False when the user said offline, or when the hub does not answer within seconds."""
    if offline_by_setting():
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=PROBE_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def url_cache_path(url: str) -> Path:
    """Where a downloaded URL is kept (``$ALIGNKIT_CACHE_DIR`` or ``~/.cache/alignkit``)."""
    root = os.environ.get("ALIGNKIT_CACHE_DIR") or os.path.join(Path.home(), ".cache", "alignkit")
    name = Path(urlparse(url).path).name or "download"
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    return Path(root).expanduser() / "downloads" / f"{digest}-{name}"


def is_cached(spec: str, kind: str) -> bool:
    """Whether a remote part is already on this machine (``kind``: model | dataset | file | url)."""
    if kind == "url":
        return url_cache_path(spec).is_file()
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        if kind == "file":
            repo, filename = split_hub_file(spec)
            hf_hub_download(repo, filename, local_files_only=True)
        else:
            snapshot_download(spec, repo_type=kind, local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        return False
    return True


def resolve_file(spec: str, key: str) -> Path:
    """A local file for ``spec`` (a path, a hub file or a URL), downloading it if need be."""
    if is_local(spec):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{key}={spec!r}: no such file on this machine")
        return path
    if is_url(spec):
        return _download_url(spec, key)
    from huggingface_hub import hf_hub_download

    repo, filename = split_hub_file(spec)
    try:
        return Path(hf_hub_download(repo, filename, local_files_only=not hub_reachable()))
    except Exception as err:  # the hub client raises many kinds; all mean "not here"
        raise FileNotFoundError(
            f"{key}={spec!r}: could not get {filename!r} from the hub repository {repo!r} "
            f"({type(err).__name__}). Download it where the hub is reachable and pass the "
            f"local file: {key}=/path/to/{Path(filename).name}"
        ) from None


def _download_url(url: str, key: str) -> Path:
    target = url_cache_path(url)
    if target.is_file():
        return target
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            payload = response.read()
    except (urllib.error.URLError, OSError) as err:
        raise FileNotFoundError(
            f"{key}={url!r} could not be downloaded ({err}); download it where the network "
            f"is reachable and pass the local file: {key}=/path/to/{Path(target).name}"
        ) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    publish(target, lambda temporary: temporary.write_bytes(payload))
    return target


def local_files_only() -> bool:
    """What to pass to ``from_pretrained``: read only the cache when the hub is unreachable."""
    return not hub_reachable()
