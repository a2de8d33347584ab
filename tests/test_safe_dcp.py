"""lmforge.safe_dcp: DCP checkpoints load without running pickled code."""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from lmforge.errors import LmforgeError
from lmforge.safe_dcp import (
    METADATA_ALLOWED_GLOBALS,
    SafeFileSystemReader,
    SafeLoadPlanner,
    _is_allowed,
    pickle_globals,
    read_metadata,
    safe_load,
)

# dcp.save outside a process group says it assumes a single process: it does, here.
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")

REFUSAL = "which a checkpoint never contains; refusing to load it (a crafted checkpoint could run code)"


class WritesMarker:
    """Pickles as `builtins.exec(<write a marker file>)`: what a crafted checkpoint could hold."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",))


class Net(nn.Module):
    """fp32 and bf16 parameters, an int64 scalar buffer and an fp16 buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.b = nn.Linear(3, 2).to(torch.bfloat16)
        self.register_buffer("count", torch.tensor(3))
        self.register_buffer("fp16", torch.zeros(2, dtype=torch.float16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x).to(torch.bfloat16)).float()


def _trained(seed: int = 0) -> tuple[Net, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    return model, opt


EXTRAS = {"step": 7, "loss": 2.5, "done": False, "shape": (1, 2.0, "x"), "none": None, "name": "run"}


def _save_checkpoint(path: Path, **more) -> tuple[Net, torch.optim.Optimizer]:
    model, opt = _trained()
    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd, **EXTRAS, **more}, checkpoint_id=path)
    return model, opt


def _fresh_target(**more) -> tuple[Net, torch.optim.Optimizer, dict]:
    torch.manual_seed(123)
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=5.0, betas=(0.5, 0.5), weight_decay=0.0)
    model(torch.randn(5, 4)).sum().backward()  # the optimizer needs state to load into
    opt.step()
    msd, osd = get_state_dict(model, opt)
    return model, opt, {"model": msd, "optim": osd, **{k: None for k in EXTRAS}, **more}


def _plain_dcp_load(state_dict: dict, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(state_dict, checkpoint_id=path)


def test_round_trip_model_and_adamw(tmp_path):
    ckpt = tmp_path / "ckpt"
    model, opt = _save_checkpoint(ckpt)
    model2, opt2, target = _fresh_target()

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "assuming single process" noise either
        safe_load(target, ckpt)
    set_state_dict(model2, opt2, model_state_dict=target["model"], optim_state_dict=target["optim"])

    for key, value in model.state_dict().items():
        loaded = model2.state_dict()[key]
        assert loaded.dtype == value.dtype, key
        assert torch.equal(loaded, value), key
    want, got = opt.state_dict(), opt2.state_dict()
    assert got["param_groups"] == want["param_groups"]
    assert got["param_groups"][0]["lr"] == 1e-3 and got["param_groups"][0]["betas"] == (0.9, 0.95)
    assert want["state"].keys() == got["state"].keys()
    for pid, state in want["state"].items():
        assert state.keys() == got["state"][pid].keys()
        for name, value in state.items():
            assert torch.equal(got["state"][pid][name], value), (pid, name)
    assert {k: target[k] for k in EXTRAS} == EXTRAS

    meta = read_metadata(ckpt)
    assert "optim.param_groups.0.lr" in meta.state_dict_metadata
    assert meta.storage_meta is not None and meta.storage_meta.load_id


def test_metadata_refers_only_to_allow_listed_globals(tmp_path):
    ckpt = tmp_path / "ckpt"
    wide = {
        f"t_{dt}".replace("torch.", ""): torch.ones(2, dtype=dt)
        for dt in (torch.float64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)
    }
    _save_checkpoint(ckpt, scalar=torch.tensor(2.5), **wide)
    found = pickle_globals((ckpt / ".metadata").read_bytes())
    assert ("torch.distributed.checkpoint.metadata", "Metadata") in found
    assert ("torch", "bfloat16") in found and ("torch", "Size") in found
    assert {g for g in found if not _is_allowed(*g)} == set()
    assert all(_is_allowed(*g) for g in METADATA_ALLOWED_GLOBALS)
    assert not _is_allowed("torch", "load") and not _is_allowed("torch", "Size.__class__")


def test_malicious_metadata_is_refused_and_not_run(tmp_path):
    ckpt = tmp_path / "ckpt"
    marker = tmp_path / "marker"
    _save_checkpoint(ckpt)
    meta = read_metadata(ckpt)
    meta.storage_meta = None
    meta.planner_data = {**meta.planner_data, "x": WritesMarker(marker)}
    (ckpt / ".metadata").write_bytes(pickle.dumps(meta))

    # Stock DCP runs it, and loads the checkpoint as if nothing happened.
    _model, _opt, target = _fresh_target()
    _plain_dcp_load(target, ckpt)
    assert marker.read_text() == "code ran"
    marker.unlink()

    _model, _opt, target = _fresh_target()
    with pytest.raises(LmforgeError) as info:
        safe_load(target, ckpt)
    message = str(info.value)
    assert message == f"{ckpt / '.metadata'}: refers to builtins.exec, {REFUSAL}"
    assert "\n" not in message
    assert not marker.exists()

    with pytest.raises(LmforgeError, match=re.escape("refers to builtins.exec")):
        read_metadata(ckpt)
    assert not marker.exists()


def test_metadata_calling_os_system_is_refused(tmp_path):
    ckpt = tmp_path / "ckpt"
    marker = tmp_path / "marker"
    _save_checkpoint(ckpt)
    # Protocol 0, as written by hand: os.system("touch <marker>")
    payload = f"cos\nsystem\n(V touch {marker}\ntR.".encode()
    (ckpt / ".metadata").write_bytes(payload)
    _model, _opt, target = _fresh_target()
    with pytest.raises(LmforgeError) as info:
        safe_load(target, ckpt)
    assert str(info.value) == f"{ckpt / '.metadata'}: refers to os.system, {REFUSAL}"
    assert not marker.exists()


def test_malicious_bytes_entry_is_refused_and_not_run(tmp_path):
    ckpt = tmp_path / "ckpt"
    marker = tmp_path / "marker"
    # dcp.save torch.saves non-tensor values as bytes entries: this one pickles a call to exec.
    _save_checkpoint(ckpt, extra=WritesMarker(marker))
    assert not marker.exists()
    read_metadata(ckpt)  # the metadata itself is clean

    _model, _opt, target = _fresh_target(extra=None)
    _plain_dcp_load(target, ckpt)
    assert marker.read_text() == "code ran"
    marker.unlink()

    _model, _opt, target = _fresh_target(extra=None)
    with pytest.raises(LmforgeError) as info:
        safe_load(target, ckpt)
    message = str(info.value)
    assert message == (
        f"{ckpt}: checkpoint entry 'extra' refers to builtins.exec, which is not plain data; "
        "refusing to load it (a crafted checkpoint could run code)"
    )
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "not_metadata"])
def test_damaged_metadata_names_the_file(tmp_path, damage):
    ckpt = tmp_path / "ckpt"
    _save_checkpoint(ckpt)
    meta_file = ckpt / ".metadata"
    data = meta_file.read_bytes()
    meta_file.write_bytes(
        {
            "truncated": data[: len(data) // 2],
            "empty": b"",
            "garbage": b"\x00not a pickle at all",
            "not_metadata": pickle.dumps({"state_dict_metadata": {}}),
        }[damage]
    )
    _model, _opt, target = _fresh_target()
    with pytest.raises(LmforgeError) as info:
        safe_load(target, ckpt)
    assert str(info.value).startswith(f"{meta_file}: ")
    assert "\n" not in str(info.value)
    with pytest.raises(LmforgeError, match=re.escape(str(meta_file))):
        read_metadata(ckpt)


def test_corrupt_bytes_entry_names_the_entry(tmp_path):
    ckpt = tmp_path / "ckpt"
    _save_checkpoint(ckpt)
    meta = read_metadata(ckpt)
    info = meta.storage_data[next(i for i in meta.storage_data if i.fqn == "loss")]
    blob = ckpt / info.relative_path
    raw = bytearray(blob.read_bytes())
    raw[info.offset : info.offset + info.length] = b"\xff" * info.length
    blob.write_bytes(bytes(raw))
    _model, _opt, target = _fresh_target()
    with pytest.raises(LmforgeError, match=r"checkpoint entry 'loss' is not plain data or is corrupt"):
        safe_load(target, ckpt)


def test_refusal_from_another_rank_is_surfaced():
    from torch.distributed.checkpoint.api import CheckpointException

    from lmforge.safe_dcp import _refusal_in

    refused = LmforgeError("ckpt: checkpoint entry 'x' refers to builtins.exec, ...")
    wrapped = CheckpointException("read", {0: (ValueError("other"), None), 1: (refused, None)})
    assert _refusal_in(wrapped) is refused
    assert _refusal_in(CheckpointException("read", {0: (ValueError("other"), None)})) is None


def test_missing_checkpoint(tmp_path):
    with pytest.raises(LmforgeError, match="no .metadata file"):
        read_metadata(tmp_path / "nowhere")


def test_planner_without_flattening_behaves_like_dcp(tmp_path):
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    ckpt = tmp_path / "flat"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"w": torch.arange(3.0), "lr": 0.25, "betas": (0.9, 0.99)}, checkpoint_id=ckpt)
    results = []
    for planner in (DefaultLoadPlanner(flatten_state_dict=False), SafeLoadPlanner(flatten_state_dict=False)):
        target = {"w": torch.zeros(3), "lr": None, "betas": None}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.load(target, storage_reader=SafeFileSystemReader(ckpt), planner=planner)
        results.append((target, planner.state_dict))
    (stock_target, stock_planned), (safe_target, safe_planned) = results
    assert torch.equal(safe_target["w"], torch.arange(3.0))
    # Unflattened, DCP leaves non-tensor values in the planner's own dict, not the caller's.
    assert safe_planned["lr"] == stock_planned["lr"] == 0.25
    assert safe_planned["betas"] == stock_planned["betas"] == (0.9, 0.99)
    assert safe_target["lr"] == stock_target["lr"]


# --- 2 processes, gloo, FSDP2 (DTensor shards) -------------------------------------------


def _fsdp_model() -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 4))
    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    return model


def _fsdp_worker(rank: int, world: int, tmp: str) -> None:
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    dist.init_process_group("gloo", init_method=f"file://{tmp}/pg", rank=rank, world_size=world)
    try:
        model = _fsdp_model()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        torch.manual_seed(1 + rank)
        model(torch.randn(3, 8)).sum().backward()
        opt.step()
        msd, osd = get_state_dict(model, opt)
        assert isinstance(msd["0.weight"], DTensor)
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=f"{tmp}/ckpt")
        full = {k: v.full_tensor() for k, v in msd.items()}
        if rank == 0:
            torch.save(full, f"{tmp}/full.pt")

        # Load back sharded, under the process group.
        model2 = _fsdp_model()
        opt2 = torch.optim.AdamW(model2.parameters(), lr=9.0)
        model2(torch.randn(3, 8)).sum().backward()
        opt2.step()
        msd2, osd2 = get_state_dict(model2, opt2)
        target = {"model": msd2, "optim": osd2}
        safe_load(target, f"{tmp}/ckpt")
        set_state_dict(model2, opt2, model_state_dict=target["model"], optim_state_dict=target["optim"])
        for key, value in get_state_dict(model2, opt2)[0].items():
            assert torch.equal(value.full_tensor(), full[key]), key
        assert opt2.param_groups[0]["lr"] == 1e-3

        # Refusals under the process group: DCP wraps errors of collectives in a
        # CheckpointException; safe_load still raises the LmforgeError, on every rank.
        marker = Path(tmp) / "marker"
        dcp.save({"extra": WritesMarker(marker)}, checkpoint_id=f"{tmp}/bad")
        with pytest.raises(LmforgeError, match="checkpoint entry 'extra' refers to builtins.exec"):
            safe_load({"extra": None}, f"{tmp}/bad")
        dist.barrier()
        if rank == 0:
            meta = read_metadata(f"{tmp}/bad")
            meta.planner_data = {**meta.planner_data, "x": WritesMarker(marker)}
            Path(f"{tmp}/bad/.metadata").write_bytes(pickle.dumps(meta))
        dist.barrier()
        with pytest.raises(LmforgeError, match=f"{tmp}/bad/.metadata: refers to builtins.exec"):
            safe_load({"extra": None}, f"{tmp}/bad")
        assert not marker.exists()
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_fsdp2_sharded_checkpoint_two_processes(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_fsdp_worker, args=(2, str(tmp_path)), nprocs=2, join=True)

    ckpt = tmp_path / "ckpt"
    assert len(list(ckpt.glob("*.distcp"))) == 2
    found = pickle_globals((ckpt / ".metadata").read_bytes())
    assert {g for g in found if not _is_allowed(*g)} == set()
    meta = read_metadata(ckpt)
    chunks = meta.state_dict_metadata["model.0.weight"].chunks
    assert len(chunks) == 2  # one shard per rank

    # The sharded checkpoint loads into a plain (unsharded) model in one process.
    full = torch.load(tmp_path / "full.pt", weights_only=True)
    plain = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 4))
    target = {"model": plain.state_dict()}
    safe_load(target, ckpt)
    for key, value in target["model"].items():
        assert torch.equal(value, full[key]), key
