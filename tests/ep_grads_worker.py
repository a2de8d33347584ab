"""The gradients of one optimizer step, unclipped and gathered to full tensors, written by rank 0
to OUT (a safetensors file): what test_expert_parallel compares with one process's. Test-only.

    python -m torch.distributed.run --standalone --nproc-per-node=4 tests/ep_grads_worker.py CONFIG OUT [--override ...]

Run without torchrun it is the one-process reference (no process group).
"""

import sys

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.distributed.tensor import DTensor

from lmforge.train.config import RunConfig
from lmforge.train.module import TrainModule
from lmforge.train.trainer import Trainer


def full_gradients(module: TrainModule) -> dict[str, torch.Tensor]:
    """Every parameter's gradient as the one-process model would hold it: FSDP shards gathered,
    and under expert parallelism the experts of every EP rank concatenated along dim 0."""
    out = {}
    for name, param in module.model.named_parameters():
        grad = param.grad.full_tensor() if isinstance(param.grad, DTensor) else param.grad
        if name in module.expert_slices:
            group = module.experts.ep_group
            parts = [torch.empty_like(grad) for _ in range(group.size())]
            dist.all_gather(parts, grad.contiguous(), group=group)
            grad = torch.cat(parts)
        out[name] = grad.detach().clone()
    return out


def main() -> None:
    config, out_path, *overrides = sys.argv[1:]
    cfg = RunConfig.from_yaml(config, [*overrides, "--optim.grad_clip=0"])  # the raw gradients
    trainer = Trainer(cfg, callbacks=[])  # its world, data loader and train module; nothing written
    module = trainer.module
    grads = {}

    def capture(_metrics) -> bool:
        grads.update(full_gradients(module))
        return True

    batches = iter(trainer.loader)
    module.train_batch(next(batches), lr=1e-3, before_step=capture)
    if trainer.world.is_main:
        save_file(grads, out_path)
    trainer.close()


if __name__ == "__main__":
    main()
