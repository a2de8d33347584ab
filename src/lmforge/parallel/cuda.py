"""Everything in lmforge that touches `torch.cuda`, in one place.

What only a GPU can test is then visible here: each function is a one-line wrapper (or a pure
function of its arguments), and the rest of lmforge calls these instead of `torch.cuda`, so the
CPU suite covers everything else. `tests/test_cuda_module.py` fails on any `torch.cuda` or
`.cuda(` outside this file. Every function is safe to import and to call on a CPU-only machine
unless its docstring says it needs a GPU.

`nccl_fault_env` and `apply_env_defaults` are not CUDA calls but belong with them: they are
the environment a GPU (NCCL) run sets before its process group is created.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path

import torch


def is_available() -> bool:
    """Whether a CUDA GPU is visible to this process."""
    return torch.cuda.is_available()


def set_device(device: torch.device) -> None:
    """Make `device` this process's current GPU (needs a GPU)."""
    torch.cuda.set_device(device)


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on `device` (needs a GPU)."""
    torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    """The GPU's product name, e.g. 'NVIDIA H200' (needs a GPU)."""
    return torch.cuda.get_device_name(device)


def max_memory_gib(device: torch.device) -> float:
    """Peak memory allocated by tensors on `device` since the start, in GiB (needs a GPU)."""
    return torch.cuda.max_memory_allocated(device) / 2**30


def timing_event() -> torch.cuda.Event:
    """An event to time GPU work between two points of the stream (needs a GPU)."""
    return torch.cuda.Event(enable_timing=True)


def elapsed_s(start: torch.cuda.Event, end: torch.cuda.Event) -> float:
    """Seconds of GPU time between two recorded events (waits for `end`)."""
    end.synchronize()
    return start.elapsed_time(end) / 1000


def rng_state() -> list[int] | None:
    """The current GPU's RNG state as plain ints (JSON-able), or None without CUDA."""
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_rng_state().tolist()


def set_rng_state(state: list[int]) -> None:
    """Restore a state from `rng_state()` on the current GPU (needs a GPU)."""
    torch.cuda.set_rng_state(torch.tensor(state, dtype=torch.uint8))


# -- the environment that makes an NCCL hang diagnosable ------------------------------------------

# PyTorch 2.9 renamed the flight recorder's variables (TORCH_NCCL_TRACE_BUFFER_SIZE ->
# TORCH_FR_BUFFER_SIZE, TORCH_NCCL_DEBUG_INFO_TEMP_FILE -> TORCH_FR_DUMP_TEMP_FILE). It still
# reads the old names, but warns that they are deprecated, and the new name wins when both are
# set; so we set the name this torch reads first, and treat either name as the user's choice.
_FR_RENAMED = {"TORCH_FR_BUFFER_SIZE": "TORCH_NCCL_TRACE_BUFFER_SIZE",
               "TORCH_FR_DUMP_TEMP_FILE": "TORCH_NCCL_DEBUG_INFO_TEMP_FILE"}  # fmt: skip
_ALIASES = {**_FR_RENAMED, **{old: new for new, old in _FR_RENAMED.items()}}


def _has_fr_names(torch_version: str) -> bool:
    """Whether this torch reads the flight recorder's TORCH_FR_* names first (2.9 and later).

    2.8 may already read them, but a new name that a torch does not read would silently turn
    the recorder off, while an old name costs at most a deprecation warning; so the later bound."""
    major, minor = (int(part) for part in torch_version.split("+")[0].split(".")[:2])
    return (major, minor) >= (2, 9)


def nccl_fault_env(trace_dir: Path, torch_version: str = torch.__version__) -> dict[str, str]:
    """The variables a GPU run sets before creating its process group so that a hang leaves
    evidence: which collective each rank was in when NCCL's watchdog timed out.

    Trace files are `trace_dir/nccl_trace_rank_<rank>` (the flight recorder appends the rank);
    create `trace_dir` first: PyTorch creates only its default folder."""
    new = _has_fr_names(torch_version)
    return {
        # The flight recorder keeps the last N collectives of every process group in a ring
        # buffer (0 turns it off); 2000 covers many steps of FSDP's per-layer collectives.
        "TORCH_FR_BUFFER_SIZE" if new else "TORCH_NCCL_TRACE_BUFFER_SIZE": "2000",
        # On a watchdog timeout or NCCL error, write that buffer to the trace file of each rank.
        "TORCH_NCCL_DUMP_ON_TIMEOUT": "1",
        # Where the dump goes: this prefix + the rank.
        "TORCH_FR_DUMP_TEMP_FILE" if new else "TORCH_NCCL_DEBUG_INFO_TEMP_FILE": f"{trace_dir}/nccl_trace_rank_",
        # On an async NCCL error, tear the process down without aborting the communicator
        # (3 = "skip cleanup"): mode 1's abort would cut off the dump above.
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "3",
        # A thread that kills the process when the watchdog itself is stuck in a CUDA/NCCL call,
        # so a hang ends (after TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC) instead of holding the GPUs.
        "TORCH_NCCL_ENABLE_MONITORING": "1",
    }


def apply_env_defaults(env: Mapping[str, str], environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set each variable of `env` that is not set in `environ` (under its name or, for the
    flight recorder's renamed ones, its other name); never override the user's value.
    Returns the variables it set."""
    applied = {}
    for name, value in env.items():
        if name in environ or _ALIASES.get(name) in environ:
            continue
        environ[name] = value
        applied[name] = value
    return applied
