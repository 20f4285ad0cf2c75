"""Sharded training state (FSDP, DeepSpeed ZeRO): how checkpoints and final weights differ.

Under FSDP or ZeRO no process holds the whole model or optimizer state, so the shared part of
a checkpoint cannot be one ``trainable.safetensors`` written by the main process. Instead
every process writes its shard with accelerate's ``save_state`` into ``sharded/`` inside the
same checkpoint folder, and ``load_state`` reads the shards back (accelerate picks the
format: torch.distributed.checkpoint for FSDP's sharded state dict, DeepSpeed's own for
ZeRO). Everything else in the folder (``state.json``, each process's random streams and
algorithm state, the staging-then-rename publication) stays as for one process.
"""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

#: the subfolder of a checkpoint that accelerate's save_state fills
SHARDED_DIR = "sharded"


def is_sharded(accelerator: Accelerator) -> bool:
    """Whether the model or optimizer state is split across processes."""
    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def check_sharded_settings(finetune: str, ema: bool) -> None:
    """Sharding is for full fine-tuning; refuse what it cannot do, before any work."""
    if finetune != "full":
        raise ValueError(
            f"FSDP / DeepSpeed ZeRO shard full fine-tuning, but model.finetune={finetune!r}: a "
            "LoRA is a few MB and needs no sharding; launch without the FSDP/DeepSpeed config "
            "(accelerate launch --multi_gpu ...), or set model.finetune=full"
        )
    if ema:
        raise ValueError(
            "trainer.ema=true keeps an unsharded average of every weight, which FSDP / "
            "DeepSpeed ZeRO cannot gather each step; set trainer.ema=false"
        )


def save_sharded_state(accelerator: Accelerator, checkpoint_folder: Path) -> None:
    """Every process writes its shard of the model and optimizer (a collective call)."""
    accelerator.save_state(str(Path(checkpoint_folder) / SHARDED_DIR))


def load_sharded_state(accelerator: Accelerator, checkpoint_folder: Path) -> None:
    """Every process reads its shard back (a collective call)."""
    accelerator.load_state(str(Path(checkpoint_folder) / SHARDED_DIR))


def gathered_state_dict(accelerator: Accelerator, model: torch.nn.Module) -> dict:
    """The whole model's weights on the main process (a collective call), for ``final/``."""
    return accelerator.get_state_dict(model)
