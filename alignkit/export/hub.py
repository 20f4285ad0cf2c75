"""``--push-to-hub REPO_ID``: a model card and the exported files, uploaded to the Hugging
Face Hub, or, without a token or a connection, left in a folder ready to upload by hand."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx
from huggingface_hub import HfApi, get_token
from huggingface_hub.constants import is_offline_mode
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import HFValidationError, validate_repo_id
from omegaconf import OmegaConf

from alignkit.evaluation import results_table
from alignkit.export.run_folder import RunFolder

GRID_NAME = "eval_grid.png"


def check_repo_id(repo_id: str) -> None:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(
            f"--push-to-hub {repo_id!r} is not a repository id: use 'user/name' ({error})"
        ) from None


def _base_model(run: RunFolder) -> str:
    if run.model.init == "random":
        return f"a tiny random-init {run.model.family.upper()} architecture (model.init=random)"
    return str(run.model.path)


def _usage(fmt: str, repo_id: str, artifact: str, family: str) -> str:
    pipeline = "StableDiffusionXLPipeline" if family == "sdxl" else "StableDiffusionPipeline"
    if fmt == "merged":
        return f'pipeline = {pipeline}.from_pretrained("{repo_id}")'
    if fmt == "diffusers":
        return f'pipeline.load_lora_weights("{repo_id}")'
    return (
        f"`{artifact}` loads in webui/Forge and ComfyUI as a LoRA; in diffusers: "
        f'`pipeline.load_lora_weights("{repo_id}", weight_name="{artifact}")`'
    )


def model_card(run: RunFolder, fmt: str, repo_id: str, artifact: str) -> str:
    """README.md: what the weights are, how they were trained and how they scored."""
    config = run.config
    path = str(run.model.path)
    hub_base = run.model.init == "pretrained" and path.count("/") == 1
    hub_base = hub_base and not os.path.exists(os.path.expanduser(path))
    tags = ["alignkit", "text-to-image", "diffusers", str(config.algo.name)]
    tags += ["stable-diffusion-xl" if run.model.family == "sdxl" else "stable-diffusion"]
    if fmt != "merged":
        tags.append("lora")
    front = ["---", "library_name: diffusers"]
    if hub_base:
        front.append(f"base_model: {run.model.path}")
    front += ["tags:", *[f"- {tag}" for tag in tags], "---"]
    usage = _usage(fmt, repo_id, artifact, run.model.family)
    training = [
        f"- base model: {_base_model(run)}",
        f"- algorithm: `{config.algo.name}`",
        f"- data: `{config.data.name}` ({OmegaConf.select(config, 'data.path')})",
        f"- steps: {config.trainer.max_steps}, batch size {config.trainer.batch_size}, "
        f"learning rate {config.trainer.lr}",
    ]
    if run.is_lora:
        lora = run.model.lora
        training.append(
            f"- LoRA rank {lora.rank}, alpha {lora.alpha}, on {', '.join(lora.target_modules)}"
        )
    else:
        training.append("- full fine-tuning of the UNet")
    lines = [*front, "", f"# {repo_id.split('/')[-1]}", ""]
    lines += [
        f"`{config.algo.name}` preference alignment of {_base_model(run)}, "
        f"trained with alignkit and exported as `{fmt}`.",
        "",
        "## Use",
        "",
        usage if fmt == "kohya" else f"```python\n{usage}\n```",
        "",
        "## Training",
        "",
        *training,
    ]
    eval_file = run.path / "eval.json"
    if eval_file.is_file():
        results = json.loads(eval_file.read_text())
        lines += ["", "## Evaluation", "", f"Aligned vs base on `{results['prompts']}`:", ""]
        lines.append(results_table(results))
    if (run.path / GRID_NAME).is_file():
        lines += ["", f"![base (left) vs aligned (right), same seeds]({GRID_NAME})"]
    recipe = OmegaConf.to_yaml(config).rstrip()
    lines += ["", "## Recipe", "", "The run's composed config:", "", f"```yaml\n{recipe}\n```", ""]
    return "\n".join(lines)


def _link_or_copy(source: str, target: str) -> None:
    """Hard links cost no space (a merged SDXL pipeline is gigabytes); copy across devices."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def stage(run: RunFolder, fmt: str, repo_id: str, artifact: Path, folder: Path) -> Path:
    """Fill ``folder`` (emptied first) with exactly what the repository should hold."""
    if folder.exists():
        shutil.rmtree(folder)
    if artifact.is_dir():
        shutil.copytree(artifact, folder, copy_function=_link_or_copy)
    else:
        folder.mkdir(parents=True)
        _link_or_copy(str(artifact), str(folder / artifact.name))
    (folder / "README.md").write_text(model_card(run, fmt, repo_id, artifact.name))
    if (run.path / GRID_NAME).is_file():
        shutil.copy2(run.path / GRID_NAME, folder / GRID_NAME)
    return folder


def offline_reason() -> str | None:
    if is_offline_mode():
        return "HF_HUB_OFFLINE=1"
    if get_token() is None:
        return "no Hugging Face token: run `hf auth login` or set HF_TOKEN"
    return None


def upload(folder: Path, repo_id: str) -> str:
    """Upload ``folder`` to ``repo_id``; a sentence that says what happened."""
    reason = offline_reason()
    if reason is None:
        try:
            api = HfApi()
            api.create_repo(repo_id, exist_ok=True)
            api.upload_folder(repo_id=repo_id, folder_path=str(folder))
            return f"uploaded {folder} to https://huggingface.co/{repo_id}"
        except (HfHubHTTPError, httpx.HTTPError, OSError) as error:
            reason = f"the Hub is unreachable or refused it: {error}"
    return (
        f"not uploaded ({reason}); the folder that would be uploaded is {folder}: "
        f"upload it with `hf upload {repo_id} {folder}`"
    )
