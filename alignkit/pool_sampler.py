"""SPO's step-wise pool sampler and resampler (docs/algorithms.md, "SPO").

From ``divert_start_step`` on, every prompt's shared latent ``x_t`` branches into ``k``
candidates ``x_{t-1} = mu + sigma z``. The next denoising step's UNet call runs on all
``prompts x k`` candidates at once (CFG halves in the same call): it yields each candidate's
``x0_hat``, which the step-aware preference model scores at the candidate's own timestep,
AND the prediction the chosen candidate continues from. So the pool costs exactly one UNet
call per denoising step, like plain sampling (only with a ``k`` times larger batch).

The best and worst candidate form a pair when ``softmax([s_best, s_worst])`` separates them
by more than ``threshold``; one candidate, drawn uniformly, continues the trajectory. With
``num_inner_steps = n`` (the SDXL recipe: 3) every candidate takes ``n`` more independent DDIM
steps after the branching one before it is scored, so a chunk is ``1 + n`` steps (4-7, 8-11,
12-15, 16-19 of 20 from step 4, as the authors' SDXL pipeline), and every transition of the
winning and losing chunks becomes a pair.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch

from alignkit.models import Backbone
from alignkit.models.text import default_micro_cond
from alignkit.sampling import (
    DDIMSchedule,
    ddim_sigma,
    ddim_step,
    guided_prediction,
    latent_shape,
    split_prediction,
)

#: ``(images [M, 3, H, W] in [0, 1], prompts [M], timesteps [M]) -> scores [M]``.
StepScorer = Callable[[torch.Tensor, list[str], torch.Tensor], torch.Tensor]


@dataclass
class PoolConfig:
    k: int = 4
    threshold: float = 0.3
    steps: int = 20
    guidance: float = 5.0
    eta: float = 1.0
    divert_start_step: int = 4
    num_inner_steps: int = 0

    def validate(self) -> None:
        if self.k < 1:
            raise ValueError(f"k={self.k}: the pool needs at least one candidate per step")
        if not 0 <= self.divert_start_step < self.steps:
            raise ValueError(
                f"divert_start_step={self.divert_start_step} must lie in [0, steps={self.steps})"
            )
        if self.num_inner_steps < 0:
            raise ValueError(f"num_inner_steps={self.num_inner_steps} must be at least 0")
        if self.eta <= 0 and self.k > 1:
            raise ValueError(
                f"eta={self.eta}: with eta <= 0 all {self.k} candidates coincide; use eta > 0"
            )


@dataclass
class Transitions:
    """Winning and losing single DDIM steps, one row per pair, conditioning included.

    ``x_t_w``/``x_t_l`` differ only inside an SDXL-style inner chunk (after its first step).
    """

    x_t_w: torch.Tensor
    x_t_l: torch.Tensor
    x_prev_w: torch.Tensor
    x_prev_l: torch.Tensor
    timesteps: torch.Tensor  # [N] long
    alpha_t: torch.Tensor  # [N]
    alpha_prev: torch.Tensor  # [N]
    prompt_ids: torch.Tensor  # [N] long: the row of the prompt within its round
    micro_cond: torch.Tensor  # [N, ...]
    text: dict[str, torch.Tensor]  # cond embeddings, [N, ...] each

    def __len__(self) -> int:
        return int(self.timesteps.shape[0])

    def tensors(self) -> dict[str, torch.Tensor]:
        """Flat name -> tensor (what crosses a checkpoint or a process boundary)."""
        flat = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "text"}
        flat.update({f"text.{k}": v for k, v in self.text.items()})
        return flat

    @classmethod
    def from_tensors(cls, flat: dict[str, torch.Tensor]) -> Transitions:
        text = {k[len("text.") :]: v for k, v in flat.items() if k.startswith("text.")}
        rest = {k: v for k, v in flat.items() if not k.startswith("text.")}
        return cls(**rest, text=text)

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Transitions:
        return Transitions.from_tensors({k: fn(v) for k, v in self.tensors().items()})

    def select(self, index: torch.Tensor | slice) -> Transitions:
        return self.map(lambda v: v[index])

    def to(self, device: torch.device | str) -> Transitions:
        return self.map(lambda v: v.to(device))

    @staticmethod
    def cat(parts: list[Transitions]) -> Transitions:
        keys = parts[0].tensors().keys()
        return Transitions.from_tensors(
            {k: torch.cat([p.tensors()[k] for p in parts]) for k in keys}
        )


def select_pairs(scores: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``scores [k, B]`` -> (best, worst) candidate indices ``[2, B]`` and the mask ``[B]`` of
    prompts whose pair is kept: ``softmax([s_best, s_worst])[0] - [1] > threshold``."""
    order = scores.argsort(dim=0, descending=True)
    best_worst = order[[0, -1]]
    pair_scores = scores.gather(0, best_worst).float().softmax(dim=0)
    return best_worst, pair_scores[0] - pair_scores[1] > threshold


def resample(k: int, batch: int, generator: torch.Generator) -> torch.Tensor:
    """The candidate each prompt continues from, uniform over the ``k`` (the resampler)."""
    return torch.randint(0, k, (batch,), generator=generator)


@dataclass
class PoolRound:
    transitions: Transitions
    scores: torch.Tensor  # every candidate score of the round (for logging)
    final_latents: torch.Tensor  # [B, C, H, W]: the continued trajectory's result
    unet_calls: int


class PoolSampler:
    """Runs one sampling round for a batch of prompts and collects the preference pairs."""

    def __init__(self, backbone: Backbone, scorer: StepScorer, cfg: PoolConfig) -> None:
        cfg.validate()
        self.backbone = backbone
        self.scorer = scorer
        self.cfg = cfg
        self.schedule = DDIMSchedule.for_backbone(backbone, cfg.steps)

    def _predict(
        self, x: torch.Tensor, step: int, text: dict, micro: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ONE UNet call over ``[uncond; cond]`` of all rows of ``x``: (x0_hat, eps_hat)."""
        rows = x.shape[0]
        out = self.backbone.predict(
            torch.cat([x, x]), self.schedule.timesteps[step].repeat(2 * rows), text, micro
        )
        guided = guided_prediction(out, self.cfg.guidance)
        return split_prediction(
            self.backbone.prediction_type, guided, x, self.schedule.alpha_t[step]
        )

    def _step(self, x, x0, eps, step: int, generator: torch.Generator) -> torch.Tensor:
        s = self.schedule
        return ddim_step(
            x, x0, eps, s.alpha_t[step], s.alpha_prev[step], self.cfg.eta, generator
        ).x_prev

    def _stochastic(self, step: int) -> bool:
        """Whether the step draws noise. One landing on ``alpha = 1`` (the last step of a
        ``set_alpha_to_one`` scheduler) has ``sigma = 0``: it has no log-probability to train,
        so it never enters a pair."""
        s = self.schedule
        return bool(ddim_sigma(s.alpha_t[step], s.alpha_prev[step], self.cfg.eta) > 0)

    def _score(self, x0: torch.Tensor, prompts: list[str], timestep: int) -> torch.Tensor:
        images = self.backbone.decode_latents(x0)
        timesteps = torch.full((x0.shape[0],), timestep, dtype=torch.long)
        return self.scorer(images, prompts, timesteps).float().cpu()

    @torch.no_grad()
    def sample(
        self, prompts: list[str], generator: torch.Generator, latents: torch.Tensor | None = None
    ) -> PoolRound:
        """One round; the initial latents come from ``generator`` unless given."""
        with self.backbone.sampling():
            return self._round(prompts, generator, latents)

    def _round(
        self, prompts: list[str], generator: torch.Generator, latents: torch.Tensor | None
    ) -> PoolRound:
        cfg, schedule, backbone = self.cfg, self.schedule, self.backbone
        batch, k, steps = len(prompts), cfg.k, cfg.steps
        device = backbone.device
        cond = backbone.encode_prompts(list(prompts))
        uncond = backbone.unconditional_text(1)
        micro_one = default_micro_cond(batch, backbone.resolution, device)

        def conditioning(copies: int) -> tuple[dict, torch.Tensor]:
            text = {
                name: torch.cat(
                    [
                        uncond[name].expand(batch * copies, *uncond[name].shape[1:]),
                        cond[name].repeat(copies, *([1] * (cond[name].dim() - 1))),
                    ]
                )
                for name in cond
            }
            return text, micro_one.repeat(2 * copies, *([1] * (micro_one.dim() - 1)))

        single, pooled = conditioning(1), conditioning(k)
        if latents is None:
            latents = torch.randn((batch, *latent_shape(backbone)), generator=generator)
        x = latents.to(device)
        calls = 0
        for step in range(cfg.divert_start_step):
            x0, eps = self._predict(x, step, *single)
            calls += 1
            x = self._step(x, x0, eps, step, generator)
        x0, eps = self._predict(x, cfg.divert_start_step, *single)
        calls += 1

        pairs, all_scores = [], []
        step = cfg.divert_start_step
        pooled_prompts = list(prompts) * k  # candidate-major: row = candidate * batch + prompt
        while step < steps:
            chunk = range(step, min(step + 1 + cfg.num_inner_steps, steps))
            cand = x.repeat(k, 1, 1, 1)
            cand_x0, cand_eps = x0.repeat(k, 1, 1, 1), eps.repeat(k, 1, 1, 1)
            chunk_moves = []
            for inner in chunk:
                nxt = self._step(cand, cand_x0, cand_eps, inner, generator)
                if self._stochastic(inner):
                    chunk_moves.append((cand, nxt, inner))
                cand = nxt
                if inner + 1 < steps:
                    cand_x0, cand_eps = self._predict(cand, inner + 1, *pooled)
                    calls += 1
                else:
                    cand_x0 = cand  # the last step lands on x_0 itself: no prediction needed
            end = chunk[-1] + 1
            score_t = int(schedule.timesteps[end]) if end < steps else 0
            scores = self._score(cand_x0, pooled_prompts, score_t).reshape(k, batch)
            all_scores.append(scores.flatten())
            best_worst, keep = select_pairs(scores, cfg.threshold)
            if keep.any() and chunk_moves:
                pairs.append(self._collect(chunk_moves, best_worst, keep, cond, micro_one))
            chosen = resample(k, batch, generator)
            rows = (chosen * batch + torch.arange(batch)).to(device)
            x, x0, eps = cand[rows], cand_x0[rows], cand_eps[rows]
            step = end
        transitions = Transitions.cat(pairs) if pairs else self._empty(x, cond, micro_one)
        return PoolRound(transitions, torch.cat(all_scores), x, calls)

    def _collect(self, moves, best_worst, keep, cond, micro) -> Transitions:
        batch = keep.shape[0]
        prompt_ids = torch.arange(batch)[keep]
        rows_w = (best_worst[0] * batch + torch.arange(batch))[keep].to(self.backbone.device)
        rows_l = (best_worst[1] * batch + torch.arange(batch))[keep].to(self.backbone.device)
        parts = []
        for x_t, x_prev, step in moves:
            n = len(prompt_ids)
            parts.append(
                Transitions(
                    x_t_w=x_t[rows_w],
                    x_t_l=x_t[rows_l],
                    x_prev_w=x_prev[rows_w],
                    x_prev_l=x_prev[rows_l],
                    timesteps=self.schedule.timesteps[step].repeat(n),
                    alpha_t=self.schedule.alpha_t[step].repeat(n),
                    alpha_prev=self.schedule.alpha_prev[step].repeat(n),
                    prompt_ids=prompt_ids,
                    micro_cond=micro[prompt_ids.to(micro.device)],
                    text={name: v[prompt_ids.to(v.device)] for name, v in cond.items()},
                )
            )
        return Transitions.cat(parts)

    def _empty(self, x, cond, micro) -> Transitions:
        none = torch.zeros(0, dtype=torch.long)
        return Transitions(
            x_t_w=x[:0], x_t_l=x[:0], x_prev_w=x[:0], x_prev_l=x[:0],
            timesteps=self.schedule.timesteps[none], alpha_t=self.schedule.alpha_t[none],
            alpha_prev=self.schedule.alpha_prev[none], prompt_ids=none,
            micro_cond=micro[:0], text={name: v[:0] for name, v in cond.items()},
        )  # fmt: skip


def even_share(
    transitions: Transitions, process_index: int, num_processes: int, permutation: torch.Tensor
) -> Transitions:
    """This process's share of the gathered transitions: shuffled by ``permutation`` (the same
    on every process), cut into ``num_processes`` equal parts; the remainder is dropped, so
    every process trains the same number of micro-batches (no process waits on a collective)."""
    per_process = len(transitions) // num_processes
    start = process_index * per_process
    return transitions.select(permutation[start : start + per_process].to(transitions.x_t_w.device))


def redistribute(transitions: Transitions, state, generator: torch.Generator) -> Transitions:
    """Gather every process's transitions and hand each an even, shuffled share.

    ``state`` is accelerate's ``PartialState`` (or an ``Accelerator``). Rounds keep a
    different number of pairs on each process; padded gathers collect them all, process 0's
    permutation is broadcast, and ``even_share`` cuts it. With one process this is a shuffle.
    """
    num = state.num_processes
    if num == 1:
        permutation = torch.randperm(len(transitions), generator=generator)
        return even_share(transitions, 0, 1, permutation)
    from accelerate.utils import broadcast, gather, pad_across_processes

    device = state.device
    counts = gather(torch.tensor([len(transitions)], device=device)).cpu()
    gathered = {}
    for name, value in transitions.tensors().items():
        chunks = gather(pad_across_processes(value.to(device), dim=0)).chunk(num)
        gathered[name] = torch.cat([c[: int(n)] for c, n in zip(chunks, counts)])
    everything = Transitions.from_tensors(gathered)
    permutation = torch.randperm(len(everything), generator=generator).to(device)
    permutation = broadcast(permutation, from_process=0).cpu()
    return even_share(everything, state.process_index, num, permutation)
