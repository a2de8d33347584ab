"""Load `torch.distributed.checkpoint` (DCP) checkpoints without running pickled code.

Why this exists: DCP's stock load path unpickles data from the checkpoint directory with
nothing restricting what the pickle may call.

* `FileSystemReader.read_metadata` does a plain `pickle.load` of `<dir>/.metadata`;
* `DefaultLoadPlanner.load_bytes` does `torch.load(value, weights_only=False)` for every
  non-tensor entry (an optimizer's param_group hyperparameters such as `lr`, `betas`,
  `weight_decay`, `amsgrad`, `foreach`, `fused`, ..., and any plain Python value in the
  state dict).

A pickle can name any importable callable (`os.system`, `builtins.exec`, ...) and have it
called while loading, so loading a checkpoint someone else wrote -- a shared artifact, a
download, a colleague's run directory -- could run arbitrary code. (Tensor payloads are
already read with `torch.load(weights_only=True)` by DCP itself.)

This module closes both holes and keeps everything else of DCP as it is:

* `SafeFileSystemReader.read_metadata` unpickles `.metadata` with an `Unpickler` whose
  `find_class` resolves only the (module, name) pairs that DCP metadata really contains
  (`METADATA_ALLOWED_GLOBALS` plus torch dtypes, listed below with how they were found);
  anything else is refused with an `LmforgeError` naming the file and the global.
* `SafeLoadPlanner.load_bytes` reads non-tensor entries with `torch.load(weights_only=True)`
  (plain data: numbers, strings, bools, None, tuples/lists/dicts, tensors), refusing any
  other entry with an `LmforgeError` naming the entry.
* `safe_load(state_dict, path)` is `dcp.load` with both of them; `read_metadata(path)`
  returns the checkpoint's `Metadata` (what it holds) without loading any tensor.

How the allow-list was found: real checkpoints were written with `dcp.save` -- a plain
`nn.Module` state dict (fp32, bf16, fp16, int64 buffers, 0-dim tensors), model + AdamW /
Adam(amsgrad) / SGD(momentum) optimizer state from
`torch.distributed.checkpoint.state_dict.get_state_dict(model, optimizer)` after one step,
python floats/ints/bools/strings/tuples/lists/None, tensors of every common dtype, both in a
single process and from 2 gloo processes with FSDP2 `fully_shard` (DTensor shards) -- and
every GLOBAL / STACK_GLOBAL opcode of their `.metadata` was listed with
`pickletools.genops` (for STACK_GLOBAL, module and name are the two strings pushed before
it, directly or from the memo). On torch 2.13 the complete set is:

    torch.distributed.checkpoint.metadata: Metadata, MetadataIndex, StorageMeta,
        TensorStorageMetadata, BytesStorageMetadata, ChunkStorageMetadata,
        TensorProperties, _MEM_FORMAT_ENCODING
    torch.distributed.checkpoint.filesystem: _StorageInfo
    torch: Size, and dtypes (float32, bfloat16, float16, float64, int64, int32, ...)
    torch.serialization: _get_layout   (how a torch.layout such as torch.strided pickles)
    pathlib: PosixPath                 (StorageMeta.checkpoint_id when saved with a Path)

The dataclasses pickle as NEWOBJ + BUILD, so no builtins are needed; dicts, lists,
tuples, strings, numbers, True/False/None have their own opcodes. Also allowed, for other
writers and platforms: `collections.OrderedDict`, the other `pathlib` path classes (a
Windows path unpickles as `PureWindowsPath` elsewhere) and `pathlib._local`, where Python
3.13 defines them; protocol < 3 spellings (`__builtin__`, `copy_reg`) are mapped to Python 3
names first, as `pickle` itself does. None of the allowed callables does anything but build
a value (`torch.Size(tuple)`, an enum lookup, a layout lookup by name, a path object that
touches no file); dotted names (`Size.__class__`) are refused, as is any persistent id.
"""

from __future__ import annotations

import _compat_pickle
import io
import os
import pickle
import pickletools
import re
import sys
import warnings
import zipfile
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import ReadItem

from lmforge.errors import LmforgeError

__all__ = [
    "METADATA_ALLOWED_GLOBALS",
    "SafeFileSystemReader",
    "SafeLoadPlanner",
    "pickle_globals",
    "read_metadata",
    "safe_load",
    "unpickle_metadata",
]

_DCP_METADATA = "torch.distributed.checkpoint.metadata"

# (module, name) pairs a DCP `.metadata` pickle may refer to (see the module docstring).
METADATA_ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        (_DCP_METADATA, "Metadata"),
        (_DCP_METADATA, "MetadataIndex"),
        (_DCP_METADATA, "StorageMeta"),
        (_DCP_METADATA, "TensorStorageMetadata"),
        (_DCP_METADATA, "BytesStorageMetadata"),
        (_DCP_METADATA, "ChunkStorageMetadata"),
        (_DCP_METADATA, "TensorProperties"),
        (_DCP_METADATA, "_MEM_FORMAT_ENCODING"),
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),
        ("collections", "OrderedDict"),
        ("pathlib", "PosixPath"),
        ("pathlib", "WindowsPath"),
        ("pathlib", "PurePosixPath"),
        ("pathlib", "PureWindowsPath"),
        ("pathlib._local", "PosixPath"),
        ("pathlib._local", "WindowsPath"),
        ("pathlib._local", "PurePosixPath"),
        ("pathlib._local", "PureWindowsPath"),
    }
)

# torch dtypes pickle as a global `torch.<name>` (e.g. torch.bfloat16): allow exactly the names
# that are dtype objects in this torch (float8 and uint16..64 exist only in newer versions).
_TORCH_DTYPE_NAMES: frozenset[str] = frozenset(
    name for name, value in vars(torch).items() if isinstance(value, torch.dtype)
)

try:  # the file name DCP writes; a private constant, stable since DCP's first release
    from torch.distributed.checkpoint.filesystem import _metadata_fn as _METADATA_FN
except ImportError:  # pragma: no cover - only if torch renames it
    _METADATA_FN = ".metadata"


def _py3_name(module: str, name: str) -> tuple[str, str]:
    """The Python 3 name of a global as protocol < 3 pickles spell it (`__builtin__.exec` is
    `builtins.exec`), as `pickle.Unpickler.find_class` maps it with `fix_imports`."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _is_allowed(module: str, name: str) -> bool:
    if (module, name) in METADATA_ALLOWED_GLOBALS:
        return True
    return module == "torch" and name in _TORCH_DTYPE_NAMES


def _resolve_allowed(module: str, name: str) -> Any:
    if module in ("pathlib", "pathlib._local"):
        import pathlib

        # A path saved on the other OS family unpickles as its pure flavour (the concrete
        # class cannot be instantiated here); it is only a label in StorageMeta.
        if name == "WindowsPath" and os.name != "nt":
            return pathlib.PureWindowsPath
        if name == "PosixPath" and os.name == "nt":  # pragma: no cover - Windows
            return pathlib.PurePosixPath
        return getattr(pathlib, name)
    __import__(module)
    return getattr(sys.modules[module], name)


class _RefusedGlobal(LmforgeError):
    """A `.metadata` pickle named a global outside the allow-list."""


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, source: str) -> None:
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        module, name = _py3_name(module, name)
        if not _is_allowed(module, name):
            raise _RefusedGlobal(
                f"{self._source}: refers to {module}.{name}, which a checkpoint never contains; "
                "refusing to load it (a crafted checkpoint could run code)"
            )
        return _resolve_allowed(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise _RefusedGlobal(
            f"{self._source}: uses a persistent id, which a checkpoint never contains; "
            "refusing to load it (a crafted checkpoint could run code)"
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def unpickle_metadata(data: bytes | io.IOBase | Any, source: str) -> Metadata:
    """Unpickle DCP metadata from bytes or a binary stream with the allow-listed unpickler.

    `source` names the file in error messages. Raises `LmforgeError` for a refused global,
    a corrupt or truncated pickle, or a pickle that is not a `Metadata`.
    """
    stream = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    try:
        metadata = _MetadataUnpickler(stream, source).load()
    except LmforgeError:
        raise
    except Exception as exc:  # noqa: BLE001 - a truncated/corrupt pickle raises many types
        raise LmforgeError(
            f"{source}: not a readable DCP checkpoint metadata file, it may be truncated or "
            f"corrupt ({_first_line(exc)}); re-save or re-copy the checkpoint"
        ) from None
    if not isinstance(metadata, Metadata):
        raise LmforgeError(
            f"{source}: holds a {type(metadata).__name__}, not DCP checkpoint metadata; "
            "is this a torch.distributed.checkpoint directory?"
        )
    return metadata


class SafeFileSystemReader(FileSystemReader):
    """`FileSystemReader` whose `read_metadata` runs no code from the checkpoint.

    The first refusal (`LmforgeError`) is kept in `refusal`: DCP catches errors of
    `read_metadata` to fall back to per-rank metadata and wraps errors raised on other
    ranks, so `safe_load` re-raises it as is; once the global `.metadata` has been
    refused, the per-rank fallback is refused too rather than silently used.
    """

    refusal: LmforgeError | None = None

    def _metadata_file(self, rank: int | None) -> Any:
        getter = getattr(self, "_get_metadata_path", None)
        if getter is not None:
            return getter(rank)
        name = _METADATA_FN if rank is None else f"__{rank}{_METADATA_FN}"
        return self.fs.concat_path(self.path, name)  # pragma: no cover - older torch

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if self.refusal is not None:
            raise self.refusal
        rank = kwargs.get("rank")
        path = self._metadata_file(rank)
        try:
            with self.fs.create_stream(path, "rb") as metadata_file:
                metadata = unpickle_metadata(metadata_file, str(path))
        except LmforgeError as exc:
            self.refusal = exc
            raise

        # As torch's FileSystemReader.read_metadata does.
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


_GLOBAL_IN_MESSAGE = re.compile(r"GLOBAL ([\w.]+)")


def pickle_globals(data: bytes) -> set[tuple[str, str]]:
    """Every (module, name) a pickle refers to, from its GLOBAL and STACK_GLOBAL opcodes.

    Nothing is executed (`pickletools.genops` only parses). For STACK_GLOBAL the module and
    name are the two strings pushed just before it, directly or fetched back from the memo.
    """
    found: set[tuple[str, str]] = set()
    stack: list[Any] = []
    memo: dict[Any, Any] = {}
    for op, arg, _pos in pickletools.genops(data):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
            stack.append(arg)
        elif op.name == "MEMOIZE":
            memo[len(memo)] = stack[-1] if stack else None
        elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = stack[-1] if stack else None
        elif op.name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo.get(arg))
        elif op.name == "GLOBAL":
            module, _, name = arg.partition(" ")
            found.add((module, name))
            stack.append(None)
        elif op.name == "STACK_GLOBAL":
            name, module = (stack.pop() if stack else None), (stack.pop() if stack else None)
            found.add((str(module), str(name)))
            stack.append(None)
        else:
            stack.append(None)
    return found


def _full_global_name(short: str, value: io.BytesIO) -> str:
    """`module.name` for the global torch's weights_only error names (sometimes only `name`)."""
    try:
        with zipfile.ZipFile(value) as archive:
            pkl = next(n for n in archive.namelist() if n.endswith("data.pkl"))
            refs = pickle_globals(archive.read(pkl))
    except Exception:  # noqa: BLE001 - only for a nicer message
        return short
    for module, name in sorted(_py3_name(m, n) for m, n in refs):
        if short in (f"{module}.{name}", name):
            return f"{module}.{name}"
    return short


class SafeLoadPlanner(DefaultLoadPlanner):
    """`DefaultLoadPlanner` that reads non-tensor entries as plain data only.

    `checkpoint_id` (optional) is only used to name the checkpoint in error messages.
    """

    refusal: LmforgeError | None = None

    def __init__(self, *args: Any, checkpoint_id: str | os.PathLike | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.checkpoint_id = checkpoint_id

    def _refuse(self, fqn: str, exc: BaseException, value: io.BytesIO) -> LmforgeError:
        where = f"{os.fspath(self.checkpoint_id)}: " if self.checkpoint_id is not None else ""
        found = _GLOBAL_IN_MESSAGE.search(str(exc))
        if isinstance(exc, pickle.UnpicklingError) and found:
            why = f"refers to {_full_global_name(found.group(1), value)}, which is not plain data"
        else:
            why = f"is not plain data or is corrupt ({_first_line(exc)})"
        err = LmforgeError(
            f"{where}checkpoint entry '{fqn}' {why}; refusing to load it (a crafted checkpoint could run code)"
        )
        if self.refusal is None:
            self.refusal = err
        return err

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        fqn = read_item.dest_index.fqn
        try:
            obj = torch.load(value, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - UnpicklingError if refused, others if corrupt
            raise self._refuse(fqn, exc, value) from None
        if self.flatten_state_dict:  # as DefaultLoadPlanner.load_bytes
            set_element(self.original_state_dict, self.mappings[fqn], obj)
        else:
            self.state_dict[fqn] = obj


def read_metadata(path: str | os.PathLike) -> Metadata:
    """The `Metadata` of the DCP checkpoint at `path` (what it holds), read safely."""
    reader = SafeFileSystemReader(path)
    try:
        return reader.read_metadata()
    except FileNotFoundError:
        raise LmforgeError(
            f"{os.fspath(path)}: no {_METADATA_FN} file, so not a torch.distributed.checkpoint "
            "directory (or it was not completely written)"
        ) from None


_SINGLE_PROCESS_WARNING = (
    r"torch\.distributed is (disabled, )?unavailable or uninitialized, assuming the intent is to load"
)


def _no_process_group() -> bool:
    return not (dist.is_available() and dist.is_initialized())


def safe_load(
    state_dict: dict[str, Any],
    path: str | os.PathLike,
    *,
    process_group: Any = None,
) -> None:
    """`torch.distributed.checkpoint.load` that runs no code from the checkpoint.

    Loads in place into `state_dict` like `dcp.load` (Stateful values get `load_state_dict`).
    Works in a single process (no process group initialised) and under an initialised
    process group (every rank calls it). Raises `LmforgeError` if the checkpoint's
    metadata or one of its entries is refused, or the metadata is corrupt.
    """
    reader = SafeFileSystemReader(path)
    planner = SafeLoadPlanner(checkpoint_id=path)
    try:
        # Check the global metadata up front: DCP would catch the refusal, log it with a
        # traceback and try per-rank metadata files instead. Every rank reads the same file,
        # so every rank refuses it alike (no rank is left waiting in a collective).
        reader.read_metadata()
    except FileNotFoundError:
        pass  # no global .metadata: DCP's own handling (per-rank metadata, or its error)
    try:
        with warnings.catch_warnings():
            if _no_process_group():
                # dcp.load (torch >= 2.2) loads in a single process by itself when no process
                # group is initialised, and warns that it assumes so: that is the intent here.
                warnings.filterwarnings("ignore", message=_SINGLE_PROCESS_WARNING, category=UserWarning)
            dcp.load(state_dict, storage_reader=reader, planner=planner, process_group=process_group)
    except (Exception, CheckpointException) as exc:
        # DCP may catch our error (per-rank metadata fallback) or wrap it, ours or another
        # rank's, in a CheckpointException (a BaseException): surface the refusal itself.
        refusal = reader.refusal or planner.refusal or _refusal_in(exc)
        if refusal is not None and refusal is not exc:
            raise refusal from None
        raise


def _refusal_in(exc: BaseException) -> LmforgeError | None:
    failures = getattr(exc, "failures", None) if isinstance(exc, CheckpointException) else None
    for _rank, failure in sorted((failures or {}).items()):
        inner = failure[0] if isinstance(failure, tuple) else failure
        if isinstance(inner, LmforgeError):
            return inner
        if isinstance(inner, CheckpointException):
            nested = _refusal_in(inner)
            if nested is not None:
                return nested
    return None
