"""Structured-config schemas, registered in Hydra's ConfigStore.

Every YAML option of a group starts from one of these schemas (``defaults: [<schema>]``),
so a misspelt key fails at compose time with a message naming it. Defaults here are the
neutral ones; the YAML files carry the recipe values and their provenance.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


@dataclass
class LoRAConfig:
    rank: int = 8
    alpha: float = 8.0
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    # peft's init_lora_weights: "gaussian" | "true" (kaiming A, zero B) | "pissa" | ...
    init: str = "gaussian"
    dropout: float = 0.0
    # our choice: None, a fresh adapter from ``init``; a path starts from that LoRA file
    # (diffusers or kohya/webui layout, detected; docs/export.md)
    load: str | None = None


@dataclass
class ModelConfig:
    name: str = MISSING
    family: str = "sd"  # sd (SD1.x/2.x family) | sdxl
    path: str | None = None  # hub id or local diffusers folder
    init: str = "pretrained"  # pretrained | random (tiny architectures built in process)
    revision: str | None = None
    variant: str | None = None
    vae_path: str | None = None  # a separate VAE (e.g. SDXL fp16-safe VAE): hub id or folder
    prediction_type: str | None = None  # override the scheduler's: epsilon | v_prediction
    resolution: int = 512
    finetune: str = "lora"  # lora | full
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    reference_device: str = "same"  # full fine-tuning only: same | cpu
    # full fine-tuning only: the frozen copy's dtype, fp32 | bf16 | fp16; None (our choice):
    # the weight dtype, i.e. trainer.mixed_precision's (bf16 halves the copy's memory)
    reference_dtype: str | None = None
    gradient_checkpointing: bool = False
    # our choice: sampling loops compute the text's cross-attention keys and values once and,
    # on the CPU, reuse oneDNN-packed weights (docs/performance.md, "Sampling"); false runs
    # every call as plain PyTorch (results differ by float rounding only)
    sampling_speedups: bool = True


@dataclass
class DataConfig:
    name: str = MISSING
    kind: str = "pairs"  # pairs | prompts
    path: str | None = None  # hub dataset id or local folder of parquet files
    split: str = "train"
    # our choice: hub ids are downloaded once and memory-mapped; true streams them instead
    # (nothing downloaded up front; only the cache build, which reads in order, can use it)
    streaming: bool = False
    max_rows: int | None = None
    style: str | None = None  # data=tiny_style_pairs: sketch | winter | stripes
    drop_ties: bool = True
    caption_dropout: float = 0.0
    # Winner and loser always share one crop and flip. With cache=true each row's crop and
    # flip are drawn once, from (seed, row id), and reused every epoch; with cache=false they
    # are drawn afresh each epoch, from (seed, epoch, row id).
    random_crop: bool = False  # False: centre crop
    random_flip: bool = True
    # sample: one draw from the VAE posterior per view (the official scripts' choice; with the
    # cache on, each row keeps the one draw it got when the cache was built); mode: its mean
    latents: str = "sample"
    cache: bool = True  # VAE latents + text embeddings encoded once, reused from disk
    cache_dir: str | None = None  # default: $ALIGNKIT_CACHE_DIR, else ~/.cache/alignkit/latents
    max_corrupt_fraction: float = 0.05  # more undecodable pairs than this stops the run
    encode_batch_size: int = 8  # images (or prompts) per frozen-encoder call
    # our choice: 1024 SD1.5 pairs make a 128 MB shard of latents (512 MB for SDXL), small
    # enough that a crash loses little, few enough files for Pick-a-Pic (about 1000)
    shard_pairs: int = 1024
    # our choice: two threads make the next batches while one trains; 0 turns prefetch off
    num_workers: int = 2


@dataclass
class AlgoConfig:
    """Base of every algorithm's schema; each algorithm module extends it."""

    name: str = MISSING


@dataclass
class RewardConfig:
    name: str = "none"
    # Where the reward model lives (nothing is downloaded): each reward uses the keys it needs
    # (docs/rewards.md); a key it does not use is an error naming the ones it takes.
    path: str | None = None  # local folder (or cached hub id for pickscore)
    checkpoint: str | None = None  # a weights file (hpsv2's HPS_v2.1_compressed.pt, a CLIP's)
    model_name: str | None = None  # an open_clip architecture name, used with checkpoint
    processor: str | None = None  # pickscore: the image processor / tokenizer folder
    head: str | None = None  # aesthetic: the MLP head's weights file
    style: str | None = None  # tiny_style: sketch | winter | stripes
    style_prompt: str | None = None  # clip_style: the text that names the style
    neutral_prompt: str | None = None  # clip_style: the baseline text
    # combo: {reward name: weight} and {reward name: {setting: value}}. Typed Any (not dict) so
    # that a command-line dict replaces the null default instead of merging into a closed struct.
    weights: Any = None
    options: Any = None


@dataclass
class LoggerConfig:
    name: str = "jsonl"  # jsonl | wandb | tensorboard (metrics.jsonl is always written)
    project: str = "alignkit"
    entity: str | None = None
    mode: str | None = None  # wandb: online | offline; None = online iff an API key is set


@dataclass
class EvalConfig:
    # None = auto: on for the tiny world's model, off otherwise; true/false force it. The
    # tiny world's prompts and rewards are set by its config (conf/_world/tiny.yaml); a real
    # model names its own (eval.prompts=/my/prompts.txt eval.rewards=[pickscore]).
    enabled: bool | None = None
    # tiny_heldout | tiny_train | general | a text file, one prompt a line. Unset, the watch
    # (eval.every) samples `general`, a dozen varied prompts (our choice); the final
    # evaluation needs it set.
    prompts: str | None = None
    seeds_per_prompt: int = 4
    steps: int = 20
    guidance: float = 3.0
    rewards: list[str] = field(default_factory=list)
    grid_prompts: int = 6
    grid_seeds: int = 3
    batch_size: int = 32
    # Watching training: every N optimizer steps, sample the first every_prompts prompts with
    # seeds 0..every_seeds-1, base and policy, and log the grid and reward means (0 = off).
    every: int = 0  # our choice: off, so a run costs nothing extra unless asked
    every_prompts: int = 4  # our choice: a few prompts keep each look to seconds
    every_seeds: int = 2  # our choice: two seeds show whether a change is more than noise


@dataclass
class TrainerConfig:
    max_steps: int = 100
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 1e-5
    lr_schedule: str = "constant"  # constant | warmup | cosine
    warmup_steps: int = 0
    optimizer: str = "adamw"  # adamw | adafactor | adamw8bit | custom
    # optimizer=custom: the dotted path of a torch.optim.Optimizer subclass and its other
    # arguments as a dict (lr and weight_decay come from trainer.lr and trainer.weight_decay).
    # The kwargs are typed Any so that a command-line dict replaces the null default.
    optimizer_target: str | None = None  # none: only optimizer=custom reads it
    optimizer_kwargs: Any = None  # none: the optimizer's own defaults
    weight_decay: float = 1e-2
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0
    # An exponential moving average of the trainable weights, used for the evaluation and
    # final/; its decay ramps up as (1 + n) / (10 + n) until it reaches ema_decay.
    ema: bool = False  # off: our choice (diffusers' training scripts also make --use_ema opt-in)
    ema_decay: float = 0.9999  # diffusers' EMAModel default (training_utils.EMAModel)
    # torch.compile the trained UNet's forward; off: our choice (compiling takes minutes on a
    # small CPU, docs/performance.md)
    compile: bool = False
    compile_backend: str = "inductor"  # torch.compile's own default backend
    # no | fp16 | bf16; None (our choice): as `accelerate config` / `accelerate launch
    # --mixed_precision` say, else "no"
    mixed_precision: str | None = None
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 1
    progress_bar: bool = True
    cpu: bool = False  # force CPU even when an accelerator is present
    # On these signals finish the optimizer step, checkpoint and exit (docs/scaling.md).
    # Our choice: SIGTERM is what schedulers send on preemption, SIGUSR1 what SLURM's
    # --signal and submitit send before a time limit.
    preempt_signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])
    preempt_exit_code: int = 143  # our choice: 128 + SIGTERM, the shell's status for it


@dataclass
class Config:
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    algo: Any = MISSING
    reward: RewardConfig = field(default_factory=RewardConfig)  # none unless a recipe picks one
    logger: LoggerConfig = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    output_dir: str = MISSING
    sweep_name: str = MISSING  # names multirun/<sweep_name> (conf/config.yaml)


GROUP_SCHEMAS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "reward": RewardConfig,
    "logger": LoggerConfig,
}


def config_group_options() -> dict[str, list[str]]:
    """The YAML options of each user-facing config group, read from the shipped conf tree."""
    from importlib.resources import files

    root = files("alignkit.conf")
    return {
        group.name: sorted(
            item.name[: -len(".yaml")] for item in group.iterdir() if item.name.endswith(".yaml")
        )
        for group in sorted(root.iterdir(), key=lambda entry: entry.name)
        if group.is_dir() and not group.name.startswith(("_", ".")) and group.name != "hydra"
    }


def style_pairs_path(style: str) -> str:
    """The shipped pairs of one style (``data=tiny_style_pairs data.style=...``), checked."""
    from alignkit.tinyworld.assets import asset_path
    from alignkit.tinyworld.styles import get_style

    return asset_path(f"style_pairs/{get_style(style, setting='data.style').name}")


def _describe_groups() -> str:
    return "\n".join(
        f"{group}: {', '.join(options)}" for group, options in config_group_options().items()
    )


def register_configs() -> None:
    """Store every schema so that YAML options can name it in their defaults list.

    Algorithm schemas come from the algorithm registry: each algorithm class names its own
    dataclass (``config_class``), so adding an algorithm edits no central table.
    """
    from alignkit.algorithms import ALGORITHMS
    from alignkit.tinyworld.assets import asset_path

    resolvers = (
        ("alignkit_groups", _describe_groups),
        ("alignkit_asset", asset_path),
        ("alignkit_style_pairs", style_pairs_path),
    )
    for name, resolver in resolvers:
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    for group, schema in GROUP_SCHEMAS.items():
        store.store(group=f"schema/{group}", name=group, node=schema)
    for name in ALGORITHMS.names():
        store.store(group="schema/algo", name=name, node=ALGORITHMS.get(name).config_class)


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: settings by their command-line names."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def setting_differences(
    old: dict[str, Any], new: dict[str, Any], ignore: tuple[str, ...] = ()
) -> list[str]:
    """``"key: old -> new"`` for each flat setting that differs, skipping the keys (and their
    subkeys) named in ``ignore``."""
    return [
        f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
        and not any(key == k or key.startswith(k + ".") for k in ignore)
    ]


class ConfigKeyError(ValueError):
    """A key that no schema declares (a typo that Hydra's ``+key=value`` let through)."""


def unknown_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Keys under ``node`` that its structured schema (if any) does not declare."""
    found = []
    schema = OmegaConf.get_type(node)
    declared = (
        {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    )
    for key in node:
        name = f"{prefix}{key}"
        if declared is not None and key not in declared:
            found.append(f"{name} (valid keys: {', '.join(sorted(declared))})")
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            found.extend(unknown_keys(child, f"{name}."))
    return found


def validate_config(cfg: DictConfig) -> None:
    """Reject keys that no schema declares, naming each and the valid ones."""
    found = unknown_keys(cfg)
    if found:
        raise ConfigKeyError("unknown config key(s): " + "; ".join(found))
