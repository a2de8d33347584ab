"""The TrainModule: everything about the model that the training loop should not know.

It builds the model on 'meta', parallelizes it (AC → compile → FSDP), materialises and
initialises it (the same weights for any world size), builds the optimizer, runs one
optimizer step over micro-batches, evaluates, and owns the model and optimizer state that
checkpoints hold. The loop (`Trainer`) hands it batches and a learning rate; it never touches
devices, dtypes or collectives itself. (OLMo-core calls this a train module; torchtitan
spreads it over its trainer and train spec.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from lmforge.data.dataset import IGNORE_INDEX, Batch
from lmforge.model.loss import LossParts
from lmforge.model.transformer import Transformer
from lmforge.parallel import World, parallelize
from lmforge.parallel.ep import expert_grad_norm_sq, expert_slices, global_state, local_state
from lmforge.parallel.fsdp import clip_grad_norm, copy_full_into, set_gradient_sync
from lmforge.train.config import RunConfig
from lmforge.train.optim import build_optimizer, set_lr


class TrainModule:
    def __init__(self, cfg: RunConfig, world: World):
        self.cfg, self.world = cfg, world
        self.device = world.device
        model = Transformer(cfg.model, device="meta")
        self.experts = parallelize(model, cfg.parallel, world)  # expert parallelism's layout, or None
        self.expert_slices = expert_slices(model)  # EP: {expert weight: the experts this rank holds}
        model.to_empty(device=self.device)
        init_weights(model, cfg.trainer.seed, self.device, self.expert_slices)
        self.model = model
        self.optimizer = build_optimizer(model, cfg.optim, cfg.model, fused=self.device.type == "cuda")
        self.micro_batch_size = cfg.trainer.micro_batch_size
        self.loss_chunk_tokens = cfg.parallel.loss_chunk_for(self.device.type)
        # FSDP averages gradients over the data-parallel ranks; our loss is already a mean
        # over the global batch's tokens, so each rank's loss is scaled up by that count.
        self.grad_scale = world.size if world.mesh is not None else 1

    # -- one optimizer step ---------------------------------------------------------------------------
    def train_batch(self, batch: Batch, lr: float,
                    before_step: Callable[[dict[str, torch.Tensor]], bool] | None = None) -> dict[str, torch.Tensor]:
        """Forward/backward every micro-batch of this rank's rows, clip, step. Returns the
        global batch's loss, z-loss, gradient norm (before clipping) and masked instances, as
        device tensors (no host sync: the logger reads them on logging steps only).

        `before_step(metrics)` sees those metrics after backward and before the optimizer
        step; if it returns False the step is skipped (gradients dropped, optimizer state
        untouched), as OLMo-core's skip-step does for loss spikes."""
        set_lr(self.optimizer, lr)
        model, mb = self.model, self.micro_batch_size
        inputs = batch.inputs.to(self.device, non_blocking=True)
        targets = batch.targets.to(self.device, non_blocking=True)
        # One all-reduce of [counted tokens, masked instances] gives the global batch's totals,
        # so the loss is normalised by the global token count on every rank, whatever its share.
        counts = self.world.all_reduce_sum(batch.counts.to(self.device, non_blocking=True))
        n_tokens = counts[0].clamp(min=1).float()
        optim = self.cfg.optim
        sums = torch.zeros(4, device=self.device)  # [ce, z, MoE lb, MoE router z] summed over this rank's tokens
        expert_counts = None  # MoE: (layers, experts) tokens routed, this rank
        n_micro = len(inputs) // mb
        for i in range(n_micro):
            set_gradient_sync(model, i == n_micro - 1)  # reduce gradients once per step
            rows = slice(i * mb, (i + 1) * mb)
            parts = self._loss(inputs[rows], targets[rows])
            loss = parts.ce + parts.z
            if parts.lb is not None and parts.router_z is not None:
                loss = loss + optim.moe_lb_loss * parts.lb + optim.moe_router_z_loss * parts.router_z
                sums[2:] += torch.stack([parts.lb.detach(), parts.router_z.detach()])
                expert_counts = parts.expert_counts if expert_counts is None else expert_counts + parts.expert_counts
            (loss * (self.grad_scale / n_tokens)).backward()
            sums[:2] += torch.stack([parts.ce.detach(), parts.z.detach()])
        grad_norm = clip_grad_norm(model.named_parameters(), optim.grad_clip, self._expert_norm_sq, self.expert_slices)
        sums = self.world.all_reduce_sum(sums) / n_tokens
        metrics = {"loss": sums[0], "z_loss": sums[1], "grad_norm": grad_norm, "masked_instances": counts[1]}
        if expert_counts is not None:
            metrics.update(moe_lb_loss=sums[2], moe_router_z_loss=sums[3], **expert_shares(
                self.world.all_reduce_sum(expert_counts.float())))
        # Always on: a step with a non-finite loss or gradient norm is never applied (the values
        # are global, so every rank decides alike; one host sync per step).
        finite = bool(torch.isfinite(metrics["loss"]) & torch.isfinite(grad_norm))
        if not finite:
            metrics["nonfinite"] = 1
        apply = before_step is None or before_step(metrics)  # callbacks see every step
        if finite and apply:
            self.optimizer.step()
        else:
            metrics["skipped_step"] = 1
        self.optimizer.zero_grad(set_to_none=True)
        return metrics

    @torch.no_grad()
    def token_losses(self, batch: Batch) -> torch.Tensor:
        """Cross-entropy of every target token of this rank's rows, (B, T) fp32 on the host
        (0 where the target is ignored), with the current weights. For attributing a loss
        spike to the documents of its batch; every rank must call it (FSDP gathers)."""
        self.model.eval()
        out = []
        for start in range(0, len(batch.inputs), self.micro_batch_size):
            inputs = batch.inputs[start : start + self.micro_batch_size].to(self.device)
            targets = batch.targets[start : start + self.micro_batch_size].to(self.device)
            logits = self.model(inputs).float()  # (b, T, V): one micro-batch at a time
            losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX,
                                                       reduction="none")
            out.append(losses.cpu())
        self.model.train()
        return torch.cat(out)

    def _expert_norm_sq(self, grads: list[torch.Tensor]) -> torch.Tensor:
        assert self.experts is not None  # only called with expert weights, which exist under EP only
        return expert_grad_norm_sq(grads, self.experts)

    def _loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> LossParts:
        return self.model(inputs, targets=targets, z_loss_weight=self.cfg.optim.z_loss,
                          loss_chunk_tokens=self.loss_chunk_tokens)

    @torch.no_grad()
    def eval_sums(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """[summed cross-entropy, counted tokens] of one micro-batch, on the device (not reduced)."""
        self.model.eval()
        parts = self.model(inputs.to(self.device), targets=targets.to(self.device),
                           loss_chunk_tokens=self.loss_chunk_tokens)
        self.model.train()
        return torch.stack([parts.ce.float(), parts.n_tokens.float()])

    # -- checkpoint contents --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, dict[str, Any]]:
        """{'model': parameters by name, 'optim': AdamW state by parameter name}, as
        `torch.distributed.checkpoint` saves them: sharded tensors on every rank, written once,
        loadable on any other number of ranks."""
        opts = StateDictOptions(full_state_dict=False, cpu_offload=False)
        state = {
            "model": get_model_state_dict(self.model, options=opts),
            "optim": get_optimizer_state_dict(self.model, self.optimizer, options=opts),
        }
        if self.experts is not None:  # expert weights at their full (E, …) shape, for any layout
            global_state(state, set(self.expert_slices), self.experts)
        return state

    def load_state_dict(self, state: dict[str, dict[str, Any]]) -> None:
        """Load 'model' and, when present, 'optim' (shaped as `state_dict()` returns them)."""
        opts = StateDictOptions(full_state_dict=False, strict=True)
        if self.experts is not None:
            local_state(state, set(self.expert_slices), self.experts)
        set_model_state_dict(self.model, state["model"], options=opts)
        if "optim" in state:
            set_optimizer_state_dict(self.model, self.optimizer, state["optim"], options=opts)

    @torch.no_grad()
    def load_full_weights(self, tensors: dict[str, torch.Tensor]) -> None:
        """Unsharded parameter values (e.g. a consolidated checkpoint) into the possibly
        sharded model: each rank keeps its slice."""
        for name, param in self.model.named_parameters():
            full = tensors[name][self.expert_slices.get(name, slice(None))]  # EP: this rank's experts
            copy_full_into(param, full.to(device=self.device, dtype=param.dtype))


@torch.no_grad()
def expert_shares(counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """From (layers, experts) routed-token counts: each expert's share of its layer's tokens,
    averaged over layers (`expert_share`, a list in metrics.jsonl), and the largest share of
    any expert in any layer times the number of experts (`expert_imbalance`: 1 when balanced)."""
    share = counts / counts.sum(dim=-1, keepdim=True).clamp(min=1)
    return {"expert_share": share.mean(dim=0), "expert_imbalance": share.max() * counts.shape[-1]}


def init_weights(model: torch.nn.Module, seed: int, device: torch.device,
                 expert_slices: dict[str, slice] | None = None) -> None:
    """Initialise every parameter as the unsharded model would (`Transformer.init_parameter`
    draws each full tensor from a generator of its own); sharded ranks keep their slice, and
    under expert parallelism only their experts' rows of the full (E, …) tensor."""
    expert_slices = expert_slices or {}
    for name, param in model.named_parameters():
        shape = param.shape
        if name in expert_slices:
            shape = (model.cfg.moe_num_experts, *shape[1:])
        full = torch.empty(shape, dtype=param.dtype, device=device)
        model.init_parameter(name, full, seed)
        copy_full_into(param, full[expert_slices.get(name, slice(None))])
    model.reset_buffers()
