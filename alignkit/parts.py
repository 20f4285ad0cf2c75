"""Check, before anything loads, that every external part of a run can be had.

A real-model run needs several things from outside the package: the diffusion model (and a
separate VAE), the data, and the algorithm's own models (RPO's CLIP, SPO's step-aware
preference model). When some are missing, the user should hear about all of them at once,
each with where to get it and which key takes a local copy, not about the first one after
minutes of loading.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from alignkit import hub


@dataclass(frozen=True)
class Part:
    """One external thing a run needs. ``kind``: model | dataset | file | url (see ``hub``)."""

    what: str
    key: str
    value: str
    kind: str


class MissingPartsError(ValueError):
    """Parts of the run that are neither on this machine nor reachable."""


def model_parts(cfg: DictConfig) -> list[Part]:
    if cfg.init != "pretrained" or not cfg.path:
        return []
    parts = [Part(f"the {cfg.name} diffusion model", "model.path", cfg.path, "model")]
    if cfg.vae_path:
        parts.append(Part(f"the {cfg.name} VAE", "model.vae_path", cfg.vae_path, "model"))
    return parts


def data_parts(cfg: DictConfig) -> list[Part]:
    path = cfg.path
    if not path or path.startswith("tiny_") or hub.is_local(path):
        return []
    if hub.is_url(path):
        return [Part(f"the prompt list of data={cfg.name}", "data.path", path, "url")]
    return [Part(f"the preference pairs of data={cfg.name}", "data.path", path, "dataset")]


def algorithm_parts(cfg: DictConfig) -> list[Part]:
    from alignkit.algorithms import ALGORITHMS

    required = getattr(ALGORITHMS.get(cfg.name), "required_parts", None)
    return list(required(cfg)) if required is not None else []


def collect_parts(cfg: DictConfig) -> list[Part]:
    return model_parts(cfg.model) + data_parts(cfg.data) + algorithm_parts(cfg.algo)


def _problem(part: Part, cached: bool, reachable: bool) -> str | None:
    """Why ``part`` cannot be had, or None when it can."""
    if hub.is_local(part.value):
        if Path(part.value).expanduser().exists():
            return None
        return "no such file or folder on this machine"
    if part.kind == "file":
        try:
            hub.split_hub_file(part.value)
        except ValueError as err:
            return str(err)
    if cached or reachable:
        return None
    return "not in the local cache, and the hub is unreachable (offline)"


def _how_to_get(part: Part) -> str:
    if hub.is_local(part.value):
        return f"fix the path: {part.key}=/path/on/this/machine"
    if part.kind == "url":
        source = f"download {part.value}"
    elif part.kind == "file":
        try:
            repo, filename = hub.split_hub_file(part.value)
        except ValueError:
            return f"pass a local file or a hub file as {part.key}=owner/name/file-in-repo"
        source = f"`huggingface-cli download {repo} {filename}`"
    else:
        flag = " --repo-type dataset" if part.kind == "dataset" else ""
        source = f"`huggingface-cli download {part.value}{flag} --local-dir DIR`"
    return f"get it where the network is reachable ({source}) and pass {part.key}=<local copy>"


def check_parts(parts: list[Part]) -> None:
    """Raise one ``MissingPartsError`` naming every part that cannot be had. The hub is
    probed only when some remote part is not in the cache yet."""
    cached = {p: not hub.is_local(p.value) and hub.is_cached(p.value, p.kind) for p in parts}
    uncached_remote = any(not hub.is_local(p.value) and not cached[p] for p in parts)
    reachable = uncached_remote and hub.hub_reachable()
    lines = [
        f"  - {part.what}: {part.key}={part.value!r}: {problem}; {_how_to_get(part)}"
        for part in parts
        if (problem := _problem(part, cached[part], reachable)) is not None
    ]
    if lines:
        raise MissingPartsError(
            f"{len(lines)} part(s) of this run cannot be had here:\n" + "\n".join(lines)
        )
