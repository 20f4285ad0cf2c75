"""The Backbone: a text-to-image diffusion model as every algorithm sees it.

Algorithms never branch on the model family: encoding prompts, micro-conditioning, the
training target (eps or v) and the reference prediction all live here. With LoRA the
reference is the same UNet with adapters disabled; with full fine-tuning it is a frozen copy
(optionally kept on the CPU).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
import torch.utils.checkpoint
from diffusers.training_utils import cast_training_params
from safetensors.torch import save_file

from alignkit.compiling import is_compiled
from alignkit.config import ModelConfig
from alignkit.models import lora as lora_lib
from alignkit.models.components import Components
from alignkit.models.encoder import block_checkpointing_off, unet_encoder_features
from alignkit.models.prepacked_weights import prepacked_weights
from alignkit.models.schedule import add_noise, regression_target
from alignkit.models.small_attention import small_attention
from alignkit.models.text import encode_prompts, unet_conditioning
from alignkit.models.text_key_values import reused_text_key_values

log = logging.getLogger(__name__)


def _place(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Move, and cast only when needed (diffusers warns on every dtype cast)."""
    module.to(device)
    return module if dtype == torch.float32 else module.to(dtype)


_REFERENCE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def reference_dtype(name: str | None, weight_dtype: torch.dtype) -> torch.dtype:
    """The frozen copy's dtype: ``model.reference_dtype``, else the weight dtype (the frozen
    encoders' under mixed precision)."""
    if name is None:
        return weight_dtype
    if name not in _REFERENCE_DTYPES:
        raise ValueError(
            f"unknown model.reference_dtype={name!r}; choose one of {sorted(_REFERENCE_DTYPES)} "
            "or null (the weight dtype)"
        )
    return _REFERENCE_DTYPES[name]


class Backbone:
    def __init__(
        self,
        components: Components,
        cfg: ModelConfig,
        identity: str,
        device: torch.device | str = "cpu",
        weight_dtype: torch.dtype = torch.float32,
    ) -> None:
        self.family = components.family
        self.cfg = cfg
        self.identity = identity
        self.device = torch.device(device)
        self.weight_dtype = weight_dtype
        self.resolution = cfg.resolution
        self.scheduler = components.scheduler
        if cfg.prediction_type:
            self.scheduler.register_to_config(prediction_type=cfg.prediction_type)
        self.prediction_type = self.scheduler.config.prediction_type
        self.alphas_cumprod = self.scheduler.alphas_cumprod.float()
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)

        self.vae = _place(components.vae.requires_grad_(False).eval(), self.device, weight_dtype)
        self.text_encoders = [
            _place(encoder.requires_grad_(False).eval(), self.device, weight_dtype)
            for encoder in components.text_encoders
        ]
        self.tokenizers = components.tokenizers
        self.zero_negative_prompt = components.zero_negative_prompt
        self._negative: dict[str, torch.Tensor] | None = None
        self.unet = components.unet
        self.reference_unet = None
        self.reference_dtype = weight_dtype
        self._configure_training(cfg)
        self.unet_forward: Callable[..., object] = self.unet

    def _configure_training(self, cfg: ModelConfig) -> None:
        if cfg.finetune == "lora":
            _place(self.unet, self.device, self.weight_dtype)
            lora_lib.add_lora(self.unet, cfg.lora)
            cast_training_params(self.unet, dtype=torch.float32)
            if cfg.lora.load:
                found = lora_lib.load_lora_file(self.unet, cfg.lora)
                log.info("LoRA started from %s (%s layout)", cfg.lora.load, found)
        elif cfg.finetune == "full":
            if cfg.lora.load:
                raise ValueError(
                    f"model.lora.load={cfg.lora.load} needs model.finetune=lora (it is 'full')"
                )
            self.unet.to(self.device).requires_grad_(True)
            same = cfg.reference_device == "same"
            reference_device = self.device if same else torch.device(cfg.reference_device)
            self.reference_dtype = reference_dtype(cfg.reference_dtype, self.weight_dtype)
            self.reference_unet = (
                copy.deepcopy(self.unet)
                .requires_grad_(False)
                .eval()
                .to(reference_device, self.reference_dtype)
            )
        else:
            raise ValueError(f"unknown model.finetune={cfg.finetune!r}; choose 'lora' or 'full'")
        if cfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.unet.train()

    @contextmanager
    def sampling(self) -> Iterator[None]:
        """Wrap a sampling loop: the text's cross-attention keys and values are computed
        once, and on the CPU the UNets' and the VAE decoder's convolution and linear weights
        are reordered for oneDNN once, not at every call, and attention over few tokens
        writes its scores out (docs/performance.md, "Sampling").
        Results are the plain calls' up to float rounding; calls with gradients, a
        compiled policy (``trainer.compile``) and ``model.sampling_speedups=false`` run as
        usual."""
        if not self.cfg.sampling_speedups or is_compiled(self.unet_forward):
            yield  # (a compiled policy would recompile for the swapped layer forwards)
            return
        unets = [self.unet] if self.reference_unet is None else [self.unet, self.reference_unet]
        # the decoder only: prefetch threads may encode images meanwhile (data.cache=false),
        # and their latents must not depend on whether a loop was running
        decoding = [m for m in (self.vae.post_quant_conv, self.vae.decoder) if m is not None]
        # the reuse wraps the packed projections, so a repeated text input skips both
        with (
            prepacked_weights([*unets, *decoding]),
            reused_text_key_values(unets),
            small_attention(unets),
        ):
            yield

    # -- frozen encoders -------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(
        self, pixels: torch.Tensor, generators: list[torch.Generator] | None = None
    ) -> torch.Tensor:
        """Pixels in [-1, 1] -> scaled latents: the posterior mode, or with ``generators`` (one
        per image, on the CPU so draws do not depend on the device) a posterior sample, as
        the official training scripts take (``latent_dist.sample()``)."""
        posterior = self.vae.encode(pixels.to(self.device, self.weight_dtype)).latent_dist
        latents = posterior.mode().float()
        if generators is not None:
            shape = latents.shape[1:]
            noise = torch.stack([torch.randn(shape, generator=g) for g in generators])
            latents = latents + posterior.std.float() * noise.to(latents.device)
        return latents * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> pixels in [0, 1]."""
        return self.decode_latents_with_grad(latents)

    def decode_latents_with_grad(self, latents: torch.Tensor) -> torch.Tensor:
        """``decode_latents`` with gradients to the latents (the VAE itself stays frozen):
        reward backpropagation (DRTune, AlignProp, ...) differentiates through the decoder."""
        scaled = latents.to(self.device, self.weight_dtype) / self.vae.config.scaling_factor
        return (self.vae.decode(scaled).sample.float() / 2 + 0.5).clamp(0, 1)

    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        text = encode_prompts(self.family, self.text_encoders, self.tokenizers, prompts)
        return {k: v.float() for k, v in text.items()}

    def unconditional_text(self, batch: int) -> dict[str, torch.Tensor]:
        """Classifier-free guidance's unconditional input for ``batch`` rows: zeros where the
        model forces zeros for the empty prompt (SDXL base, as diffusers' pipeline), else the
        encoding of "". Computed once."""
        if self._negative is None:
            empty = self.encode_prompts([""])
            self._negative = (
                {k: torch.zeros_like(v) for k, v in empty.items()}
                if self.zero_negative_prompt
                else empty
            )
        return {k: v.expand(batch, *v.shape[1:]) for k, v in self._negative.items()}

    def encode_guided(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Text conditioning laid out ``[uncond; cond]`` for one guided UNet call."""
        cond = self.encode_prompts(list(prompts))
        uncond = self.unconditional_text(len(prompts))
        return {k: torch.cat([uncond[k], v]) for k, v in cond.items()}

    # -- diffusion ---------------------------------------------------------------------------
    def sample_timesteps(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.num_train_timesteps, (batch_size,), generator=generator)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return add_noise(x0, noise, self.alphas_cumprod, t)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return regression_target(self.prediction_type, x0, noise, self.alphas_cumprod, t)

    def predict(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        text: dict[str, torch.Tensor],
        micro_cond: torch.Tensor | None = None,
        reference: bool = False,
    ) -> torch.Tensor:
        """The UNet's output in float32; ``reference=True`` gives the frozen model's, no grad."""
        if not reference:
            return self._call(self.unet_forward, x_t, t, text, micro_cond, self.device)
        with torch.no_grad():
            if self.reference_unet is None:
                with lora_lib.adapters_disabled(self.unet):
                    return self._call(self.unet_forward, x_t, t, text, micro_cond, self.device)
            device = next(self.reference_unet.parameters()).device
            return self._call(self.reference_unet, x_t, t, text, micro_cond, device)

    def encoder_features(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text: dict[str, torch.Tensor],
        micro_cond: torch.Tensor | None = None,
        layer: str = "mid",
    ) -> torch.Tensor:
        """The frozen base UNet's encoder activations of ``x`` at ``t`` (NCP), float32.

        The encoder is the reference: the adapter-disabled UNet with LoRA, the frozen copy
        with full fine-tuning. No weight gets a gradient here; gradients reach ``x`` only, so
        callers choose no_grad (targets) or not (the policy's prediction) themselves.
        """
        if self.reference_unet is None:
            unet, device, reference = self.unet, self.device, lora_lib.adapters_disabled
        else:
            unet = self.reference_unet
            device, reference = next(unet.parameters()).device, nullcontext

        def encode(sample: torch.Tensor) -> torch.Tensor:
            with reference(unet), block_checkpointing_off(unet):
                return self._encode(unet, sample, t, text, micro_cond, layer, device)

        if self.cfg.gradient_checkpointing and torch.is_grad_enabled():
            # checkpoint the whole encoder pass: its recomputation re-enters the reference
            return torch.utils.checkpoint.checkpoint(encode, x, use_reentrant=False)
        return encode(x)

    def _input_dtype(self, unet) -> torch.dtype:
        """Inputs follow the frozen copy's own dtype (``model.reference_dtype``) when it is
        the one called, else the weight dtype."""
        return self.reference_dtype if unet is self.reference_unet else self.weight_dtype

    def _encode(self, unet, x, t, text, micro_cond, layer, device) -> torch.Tensor:
        text = {k: v.to(device) for k, v in text.items()}
        micro_cond = None if micro_cond is None else micro_cond.to(device)
        dtype = self._input_dtype(unet)
        kwargs = unet_conditioning(self.family, text, micro_cond, dtype)
        features = unet_encoder_features(
            unet, x.to(device, dtype), t.to(device), layer=layer, **kwargs
        )
        return features.float().to(self.device)

    def _call(self, unet, x_t, t, text, micro_cond, device) -> torch.Tensor:
        text = {k: v.to(device) for k, v in text.items()}
        micro_cond = None if micro_cond is None else micro_cond.to(device)
        dtype = self._input_dtype(unet)
        kwargs = unet_conditioning(self.family, text, micro_cond, dtype)
        out = unet(x_t.to(device, dtype), t.to(device), **kwargs, return_dict=False)
        return out[0].float().to(self.device)

    # -- training state ------------------------------------------------------------------------
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.unet.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        if self.cfg.finetune == "lora":
            return lora_lib.lora_state_dict(self.unet)
        return {k: v.detach().cpu().clone() for k, v in self.unet.state_dict().items()}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.cfg.finetune == "lora":
            lora_lib.load_lora_state_dict(self.unet, state)
        else:
            self.unet.load_state_dict(state)

    def save_final(
        self, folder: str | Path, weights: dict[str, torch.Tensor] | None = None
    ) -> Path:
        """The result in diffusers' format: a LoRA file, or a full ``unet/`` folder
        (``weights``: the UNet's state gathered from the processes' shards, FSDP / ZeRO)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.cfg.finetune == "lora":
            return lora_lib.save_lora_for_diffusers(self.unet, self.family, folder, self.cfg.lora)
        if weights is None:
            self.unet.save_pretrained(folder / "unet", safe_serialization=True)
            return folder / "unet"
        self.unet.save_config(
            folder / "unet"
        )  # diffusers' layout, written from the gathered weights
        tensors = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
        save_file(tensors, folder / "unet" / "diffusion_pytorch_model.safetensors")
        return folder / "unet"
