import pytest
import torch

from lmforge.model.loss import IGNORE_INDEX, linear_cross_entropy, lm_loss


def make_inputs(shape, d=16, v=37, dtype=torch.float32, seed=0, ignore_frac=0.25):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(*shape, d, generator=g) * 2).to(dtype).requires_grad_()
    weight = torch.randn(v, d, generator=g).to(dtype).requires_grad_()
    targets = torch.randint(0, v, shape, generator=g)
    targets[torch.rand(shape, generator=g) < ignore_frac] = IGNORE_INDEX
    return hidden, weight, targets


def reference(hidden, weight, targets, z_loss_weight):
    """lm_loss on materialised logits: values and grads w.r.t. hidden and weight."""
    h, w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    parts = lm_loss(h @ w.T, targets, z_loss_weight=z_loss_weight, reduction="sum")
    (parts.ce + parts.z).backward()
    return parts, h.grad, w.grad


def fused(hidden, weight, targets, z_loss_weight, chunk_tokens, grad_scale=1.0):
    h, w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    parts = linear_cross_entropy(h, w, targets, z_loss_weight=z_loss_weight, chunk_tokens=chunk_tokens)
    ((parts.ce + parts.z) * grad_scale).backward()
    return parts, h.grad, w.grad


def assert_close(a, b, rtol):
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * b.abs().max().item())


@pytest.mark.parametrize("z_loss_weight", [0.0, 1e-2])
@pytest.mark.parametrize("chunk_tokens", [1, 7, 16, 1000])  # 7 does not divide N=48; 1000 > N
@pytest.mark.parametrize("shape", [(48,), (3, 16)])
def test_matches_lm_loss_fp32(z_loss_weight, chunk_tokens, shape):
    hidden, weight, targets = make_inputs(shape)
    ref, ref_gh, ref_gw = reference(hidden, weight, targets, z_loss_weight)
    got, gh, gw = fused(hidden, weight, targets, z_loss_weight, chunk_tokens)
    assert_close(got.ce, ref.ce, 1e-5)
    assert_close(got.z, ref.z, 1e-5)
    assert got.n_tokens == ref.n_tokens
    assert gh.shape == hidden.shape and gh.dtype == hidden.dtype
    assert gw.shape == weight.shape and gw.dtype == weight.dtype
    assert_close(gh, ref_gh, 1e-5)
    assert_close(gw, ref_gw, 1e-5)


def test_grad_scale_and_parts():
    """The trainer backpropagates (ce + z) · scale; ce and z keep their own values."""
    hidden, weight, targets = make_inputs((40,))
    ref, ref_gh, ref_gw = reference(hidden, weight, targets, 1e-2)
    got, gh, gw = fused(hidden, weight, targets, 1e-2, chunk_tokens=8, grad_scale=0.125)
    assert got.ce.requires_grad and not got.z.requires_grad
    assert got.z > 0
    assert_close(gh, ref_gh * 0.125, 1e-5)
    assert_close(gw, ref_gw * 0.125, 1e-5)


def test_z_is_zero_without_weight():
    hidden, weight, targets = make_inputs((20,))
    got = linear_cross_entropy(hidden, weight, targets)
    assert got.z.item() == 0.0 and got.z.dtype == torch.float32


def test_ignored_chunk_contributes_no_gradient():
    hidden, weight, targets = make_inputs((32,), ignore_frac=0.0)
    targets[8:16] = IGNORE_INDEX  # exactly the second chunk of 8
    ref, ref_gh, ref_gw = reference(hidden, weight, targets, 1e-2)
    got, gh, gw = fused(hidden, weight, targets, 1e-2, chunk_tokens=8)
    assert torch.all(gh[8:16] == 0)
    assert got.n_tokens == 24
    assert_close(got.ce, ref.ce, 1e-5)
    assert_close(gw, ref_gw, 1e-5)
    # Dropping the ignored rows altogether changes nothing.
    keep = targets != IGNORE_INDEX
    sub, _, sub_gw = fused(hidden[keep], weight, targets[keep], 1e-2, chunk_tokens=8)
    assert_close(got.ce, sub.ce, 1e-5)
    assert_close(gw, sub_gw, 1e-5)


def test_all_ignored():
    hidden, weight, targets = make_inputs((10,), ignore_frac=1.1)
    got, gh, gw = fused(hidden, weight, targets, 1e-2, chunk_tokens=4)
    assert got.ce.item() == 0.0 and got.z.item() == 0.0 and got.n_tokens == 0
    assert torch.all(gh == 0) and torch.all(gw == 0)


def test_only_needed_grads_and_no_grad():
    hidden, weight, targets = make_inputs((24,))
    ref, ref_gh, _ = reference(hidden, weight, targets, 0.0)
    frozen = weight.detach()  # no grad for the head: its matmul is skipped
    h = hidden.detach().clone().requires_grad_()
    parts = linear_cross_entropy(h, frozen, targets, chunk_tokens=5)
    (parts.ce + parts.z).backward()
    assert_close(h.grad, ref_gh, 1e-5)
    with torch.no_grad():
        parts = linear_cross_entropy(hidden, weight, targets, chunk_tokens=5)
    assert not parts.ce.requires_grad
    assert_close(parts.ce, ref.ce, 1e-5)


@pytest.mark.parametrize("z_loss_weight", [0.0, 1e-2])
def test_bf16(z_loss_weight):
    hidden, weight, targets = make_inputs((4, 24), d=32, v=64, dtype=torch.bfloat16)
    ref, ref_gh, ref_gw = reference(hidden, weight, targets, z_loss_weight)
    got, gh, gw = fused(hidden, weight, targets, z_loss_weight, chunk_tokens=40)
    assert got.ce.dtype == torch.float32
    assert gh.dtype == torch.bfloat16 and gh.shape == hidden.shape
    assert gw.dtype == torch.bfloat16 and gw.shape == weight.shape
    assert_close(got.ce, ref.ce, 1e-3)
    assert_close(got.z, ref.z, 1e-3)
    assert_close(gh.float(), ref_gh.float(), 2e-2)
    assert_close(gw.float(), ref_gw.float(), 2e-2)


def test_rejects_bad_chunk():
    hidden, weight, targets = make_inputs((4,))
    with pytest.raises(ValueError):
        linear_cross_entropy(hidden, weight, targets, chunk_tokens=0)


@pytest.mark.parametrize("z_loss_weight", [0.0, 0.1])
def test_gradcheck_fp64(z_loss_weight):
    hidden, weight, targets = make_inputs((13,), d=5, v=11, dtype=torch.float64)

    def total(h, w):
        parts = linear_cross_entropy(h, w, targets, z_loss_weight=z_loss_weight, chunk_tokens=4)
        return parts.ce + parts.z

    assert torch.autograd.gradcheck(total, (hidden, weight))
