"""`lmforge.parallel.cuda` holds every `torch.cuda` call, so what only a GPU can test is in one
place; and the parts of the GPU path that do not need a GPU run here on CPU: the NCCL fault
environment, and the fused loss in bf16 (FSDP's param_dtype) against an fp32 reference."""

import collections
import copy
import io
import tokenize
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import lmforge
from lmforge.data.dataset import IGNORE_INDEX
from lmforge.model.config import ModelConfig
from lmforge.model.loss import linear_cross_entropy
from lmforge.model.transformer import Transformer
from lmforge.parallel import cuda
from lmforge.parallel.config import ParallelConfig

SRC = Path(lmforge.__file__).parent
CUDA_MODULE = SRC / "parallel" / "cuda.py"


# -- every torch.cuda call is in parallel/cuda.py -----------------------------------------------------


def cuda_uses(source: str) -> list[int]:
    """Lines of `source` that use `torch.cuda`, call `.cuda(` or import `cuda` from torch;
    comments and strings do not count (the tokenizer sets them apart)."""
    words = [(t.string, t.start[0]) for t in tokenize.generate_tokens(io.StringIO(source).readline)
             if t.type in (tokenize.NAME, tokenize.OP)]  # fmt: skip
    on_line = collections.defaultdict(list)
    for word, line in words:
        on_line[line].append(word)
    lines = []
    for i, (word, line) in enumerate(words):
        following = [w for w, _ in words[i + 1 : i + 3]]
        if (word, following) in (("torch", [".", "cuda"]), (".", ["cuda", "("])) or (
            word == "from" and following == ["torch", "import"] and "cuda" in on_line[line]
        ):
            lines.append(line)
    return lines


def test_cuda_uses_finds_calls_but_not_comments():
    source = (
        "import torch\n"
        "# torch.cuda.synchronize() in a comment\n"
        "x = 'torch.cuda in a string'\n"
        "ok = torch.cuda.is_available()\n"
        "t = t.cuda()\n"
        "from torch import cuda\n"
        "y = torch.device('cuda')\n"
    )
    assert cuda_uses(source) == [4, 5, 6]


def test_every_torch_cuda_call_is_in_the_cuda_module():
    found = [f"{path.relative_to(SRC.parent)}:{line}"
             for path in sorted(SRC.rglob("*.py")) if path != CUDA_MODULE
             for line in cuda_uses(path.read_text())]  # fmt: skip
    assert not found, f"torch.cuda outside lmforge/parallel/cuda.py (call lmforge.parallel.cuda instead): {found}"


# -- the NCCL fault environment ----------------------------------------------------------------------


def test_apply_env_defaults_keeps_the_users_value():
    environ = {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "1", "PATH": "/bin"}
    env = {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "3", "TORCH_NCCL_DUMP_ON_TIMEOUT": "1"}
    applied = cuda.apply_env_defaults(env, environ)
    assert applied == {"TORCH_NCCL_DUMP_ON_TIMEOUT": "1"}
    assert environ == {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "1", "TORCH_NCCL_DUMP_ON_TIMEOUT": "1", "PATH": "/bin"}
    assert cuda.apply_env_defaults(env, environ) == {}  # a second call sets nothing


@pytest.mark.parametrize(("torch_version", "buffer", "trace_file"), [
    ("2.13.0+cpu", "TORCH_FR_BUFFER_SIZE", "TORCH_FR_DUMP_TEMP_FILE"),
    ("2.8.0+cu128", "TORCH_NCCL_TRACE_BUFFER_SIZE", "TORCH_NCCL_DEBUG_INFO_TEMP_FILE"),
])  # fmt: skip
def test_nccl_fault_env_names_and_trace_folder(tmp_path, torch_version, buffer, trace_file):
    env = cuda.nccl_fault_env(tmp_path / "traces", torch_version)
    assert Path(env[trace_file]).parent == tmp_path / "traces"  # the recorder appends the rank to the name
    assert int(env[buffer]) > 0  # 0 would turn the flight recorder off
    assert env["TORCH_NCCL_DUMP_ON_TIMEOUT"] == "1"
    assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "3"  # mode 1 would abort before the dump
    assert env["TORCH_NCCL_ENABLE_MONITORING"] == "1"


def test_a_users_old_flight_recorder_name_counts_as_set(tmp_path):
    """On torch ≥ 2.9 the TORCH_FR_* name wins over the old one, so setting it over a user's
    TORCH_NCCL_TRACE_BUFFER_SIZE would override the user."""
    environ = {"TORCH_NCCL_TRACE_BUFFER_SIZE": "0"}
    applied = cuda.apply_env_defaults(cuda.nccl_fault_env(tmp_path, "2.11.0"), environ)
    assert "TORCH_FR_BUFFER_SIZE" not in environ and "TORCH_FR_DUMP_TEMP_FILE" in applied


def test_rng_state_is_none_without_cuda():
    if cuda.is_available():
        pytest.skip("CUDA is available")
    assert cuda.rng_state() is None


# -- the fused loss in bf16 --------------------------------------------------------------------------

# bf16 keeps 8 significant bits (relative rounding 2^-9 ≈ 2e-3). The fused loss rounds the logits
# and their gradient to bf16 once each and runs the matmuls in bf16, accumulating in fp32. The
# summed loss averages those roundings out over tokens (measured ≤ 1.3e-5 relative over 5 seeds);
# each gradient element carries them (measured ≤ 5.2e-3 of the largest element).
LOSS_RTOL = 1e-4
GRAD_RTOL = 1e-2


def bf16_inputs(seed, shape=(4, 96), d=256, v=4096):
    """Unit-variance hidden states (after the final norm) and a head whose logits have std ≈ 0.8,
    about a trained model's; a fifth of the targets ignored (padding, document boundaries)."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*shape, d, generator=g).bfloat16()
    weight = (torch.randn(v, d, generator=g) * 0.05).bfloat16()
    targets = torch.randint(0, v, shape, generator=g)
    targets[torch.rand(shape, generator=g) < 0.2] = IGNORE_INDEX
    return hidden, weight, targets


def fp32_reference(hidden, weight, targets, z_loss_weight, grad_scale):
    """Plain cross-entropy + z·logsumexp² on the fp32 upcast of the same bf16 values."""
    h, w = hidden.float().requires_grad_(), weight.float().requires_grad_()
    logits, flat = (h @ w.T).flatten(0, -2), targets.flatten()
    ce = F.cross_entropy(logits, flat, ignore_index=IGNORE_INDEX, reduction="sum")
    z = z_loss_weight * torch.logsumexp(logits, dim=-1)[flat != IGNORE_INDEX].square().sum()
    ((ce + z) * grad_scale).backward()
    return ce.detach(), z.detach(), h.grad, w.grad


def max_rel_error(got, want):
    """Largest error relative to the largest reference value (elements near 0 carry no scale)."""
    return ((got.float() - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize("z_loss_weight", [1e-5, 1e-2])  # the trainer's default, and a large one
@pytest.mark.parametrize("seed", [0, 1])
def test_fused_loss_in_bf16_matches_fp32(seed, z_loss_weight):
    hidden, weight, targets = bf16_inputs(seed)
    n_tokens = (targets != IGNORE_INDEX).sum()
    grad_scale = 1.0 / n_tokens.item()  # as the trainer backpropagates: a mean over the batch's tokens
    ref_ce, ref_z, ref_gh, ref_gw = fp32_reference(hidden, weight, targets, z_loss_weight, grad_scale)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    chunk = 100  # < 384 tokens, and does not divide them
    parts = linear_cross_entropy(h, w, targets, z_loss_weight=z_loss_weight, chunk_tokens=chunk)
    ((parts.ce + parts.z) * grad_scale).backward()
    assert parts.n_tokens == n_tokens
    assert parts.ce.dtype == parts.z.dtype == torch.float32
    assert h.grad.dtype == w.grad.dtype == torch.bfloat16  # the parameters' dtype, as FSDP expects
    assert h.grad.shape == hidden.shape and w.grad.shape == weight.shape
    assert abs(parts.ce.item() - ref_ce.item()) <= LOSS_RTOL * ref_ce.item()
    assert abs(parts.z.item() - ref_z.item()) <= LOSS_RTOL * ref_z.item()
    assert max_rel_error(h.grad, ref_gh) <= GRAD_RTOL
    assert max_rel_error(w.grad, ref_gw) <= GRAD_RTOL
    ignored = targets == IGNORE_INDEX
    assert torch.all(h.grad[ignored] == 0)  # ignored tokens get exactly no gradient


def test_bf16_model_fused_loss_costs_no_more_than_bf16_logits():
    """A model with bf16 parameters (FSDP's param_dtype; the RoPE buffer stays fp32), its loss
    chunked as the trainer chunks it on CPU, against the same weights in fp32. All of the model
    computes in bf16, which costs its gradients about 1e-2 (norm-relative) either way; the fused
    loss must cost no more than the materialised bf16 logits do (measured ≤ 1.45× over 15 seeds)."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=512, d_model=64, n_layers=1, n_heads=4, mlp_hidden=128)
    model = Transformer(cfg)
    for p in model.parameters():
        p.data = p.data.bfloat16()
    fp32 = copy.deepcopy(model)
    for p in fp32.parameters():
        p.data = p.data.float()
    chunk = ParallelConfig().loss_chunk_for("cpu")
    tokens = torch.randint(0, cfg.vocab_size, (2, chunk * 5 // 8 + 1))  # 1282 tokens: 2 chunks, the last partial
    targets = tokens.roll(-1, dims=1)
    targets[:, -1] = IGNORE_INDEX
    targets[0, :100] = IGNORE_INDEX

    def loss_and_grads(m, loss_chunk_tokens):
        parts = m(tokens, targets=targets, z_loss_weight=1e-2, loss_chunk_tokens=loss_chunk_tokens)
        ((parts.ce + parts.z) / parts.n_tokens).backward()
        grads = {n: p.grad for n, p in m.named_parameters()}
        m.zero_grad(set_to_none=True)
        return parts, grads

    fused, fused_grads = loss_and_grads(model, chunk)
    _, plain_grads = loss_and_grads(model, 0)
    ref, ref_grads = loss_and_grads(fp32, 0)
    assert abs(fused.ce.item() - ref.ce.item()) <= LOSS_RTOL * ref.ce.item()
    assert abs(fused.z.item() - ref.z.item()) <= LOSS_RTOL * ref.z.item()
    for name, grad in fused_grads.items():
        assert grad.dtype == torch.bfloat16, name
        fused_error = norm_rel_error(grad, ref_grads[name])
        plain_error = norm_rel_error(plain_grads[name], ref_grads[name])
        assert fused_error <= 2 * plain_error, (name, fused_error, plain_error)


def norm_rel_error(got, want):
    return ((got.float() - want).norm() / want.norm()).item()
