"""PyTorch checkpoints (`.pth` / `.pt`) read without torch, and without running code.

Both the zip format (torch >= 1.6: `<root>/data.pkl` + `<root>/data/<key>` storage
records + `<root>/byteorder`) and the legacy stream (magic number, protocol 1001,
sys-info dict, the object pickle, the storage-key list, then every storage as an int64
element count followed by its raw bytes). The object pickle is read by
`SafeUnpickler`, which resolves only `ALLOWED_GLOBALS`, the globals a tensor container
needs (`torch._utils._rebuild_tensor_v2`/`_v3`/`_rebuild_parameter*`, `torch.*Storage`,
`torch.<dtype>`, `collections.OrderedDict` and a few inert builtins), each to an inert
stand-in that refuses BUILD, and refuses every other global (and the EXT* opcodes) with
`UnsafeCheckpointError` naming it, so loading a file never runs code. Storage bytes are
only viewed as numbers, never unpickled.
TorchScript archives (`torch.jit.save`, e.g. OpenAI's CLIP `.pt` downloads: a zip with a
`<root>/code/` tree beside `data.pkl`) pickle their modules as `__torch__.<Class>`
objects whose state is an attribute dict; in such an archive, and only there, every
`__torch__.*` global resolves to the inert `_ScriptObject`, which keeps that dict (nested
modules and tensors) and nothing else. The archive's code is never read.
Tensors come back as numpy arrays (bfloat16/float8 through `ml_dtypes`); views keep
their offsets/strides and tensors sharing a storage are rebuilt from the same bytes.
"""

from __future__ import annotations

import _compat_pickle
import copyreg
import io
import os
import pickle
import pickletools
import struct
import sys
import tarfile
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

from fgjax.weights.pth_storage import STORAGE_DTYPES

PathLike = str | os.PathLike

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# torch dtype attribute name -> numpy dtype (`torch.float32` pickles as `torch float32`).
_TORCH_DTYPES: dict[str, np.dtype] = {
    "float64": np.dtype(np.float64),
    "double": np.dtype(np.float64),
    "float32": np.dtype(np.float32),
    "float": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "half": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
    "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
    "float8_e4m3fnuz": np.dtype(ml_dtypes.float8_e4m3fnuz),
    "float8_e5m2fnuz": np.dtype(ml_dtypes.float8_e5m2fnuz),
    "int64": np.dtype(np.int64),
    "long": np.dtype(np.int64),
    "int32": np.dtype(np.int32),
    "int": np.dtype(np.int32),
    "int16": np.dtype(np.int16),
    "short": np.dtype(np.int16),
    "int8": np.dtype(np.int8),
    "uint8": np.dtype(np.uint8),
    "uint16": np.dtype(np.uint16),
    "uint32": np.dtype(np.uint32),
    "uint64": np.dtype(np.uint64),
    "bool": np.dtype(np.bool_),
    "complex64": np.dtype(np.complex64),
    "cfloat": np.dtype(np.complex64),
    "complex128": np.dtype(np.complex128),
    "cdouble": np.dtype(np.complex128),
}


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The checkpoint's pickle references a global outside the tensor-rebuild allowlist."""


class CheckpointFormatError(ValueError):
    """The file is not a readable checkpoint (corrupt, truncated, unsupported layout)."""


# --------------------------------------------------------------------------- unpickling


class _Sealed:
    """Refuses the pickle BUILD opcode, so a file cannot rewrite a validated object."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        label = getattr(self, "name", None) or type(self).__name__
        raise CheckpointFormatError(f"refusing pickle BUILD on {label}: its state is fixed")


class _Call(_Sealed):
    """Stand-in for an allowed callable global: calls `func`, naming the global on bad args.

    Wrapping (instead of handing out the function or type itself) is what makes BUILD on
    an allowed global fail: a bare function would take `__dict__`/`__defaults__` from
    the file and change how every later checkpoint is read."""

    __slots__ = ("name", "func")

    def __init__(self, name: str, func: Callable[..., Any]):
        self.name, self.func = name, func

    def __call__(self, *args: Any) -> Any:
        try:
            return self.func(*args)
        except (TypeError, ValueError, OverflowError) as e:  # CheckpointFormatError included
            raise CheckpointFormatError(f"refusing call of {self.name}: {e}") from None


class _DType(_Sealed):
    """Stand-in for a `torch.<dtype>` global."""

    __slots__ = ("name", "np")

    def __init__(self, name: str, dtype: np.dtype):
        self.name, self.np = name, dtype


class _StorageType(_Sealed):
    """Stand-in for a `torch.<X>Storage` class global."""

    __slots__ = ("name", "np")

    def __init__(self, name: str, dtype: np.dtype):
        self.name, self.np = name, dtype


class _TensorClass(_Sealed):
    """Stand-in for `torch.Tensor` / `torch.nn.Parameter` (only ever compared, never called)."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


class _Storage(_Sealed):
    """A storage: `numel` elements of `dtype`, bytes fetched lazily by `key`.

    Its bytes are only ever viewed as numbers (`np.frombuffer`), never unpickled, so a
    pickle hidden in a storage record is inert data. `base`/`byte_offset` describe legacy
    storage views (a slice of another storage)."""

    __slots__ = ("key", "dtype", "numel", "base", "byte_offset", "_data", "_fetch")

    def __init__(self, key: str, dtype: np.dtype, numel: int, fetch: Callable[[str], bytes]):
        self.key, self.dtype, self.numel = key, dtype, numel
        self.base: _Storage | None = None
        self.byte_offset = 0
        self._data: bytes | None = None
        self._fetch = fetch

    def data(self) -> memoryview:
        if self.base is not None:
            start = self.byte_offset
            return self.base.data()[start : start + self.numel * self.dtype.itemsize]
        if self._data is None:
            self._data = self._fetch(self.key)
        return memoryview(self._data)


class _TensorRef(_Sealed):
    """A tensor as the pickle describes it; turned into an ndarray after unpickling."""

    __slots__ = ("storage", "dtype", "offset", "shape", "stride", "metadata")

    def __init__(self, storage, dtype, offset, shape, stride, metadata=None):
        if not isinstance(storage, _Storage):
            raise CheckpointFormatError(
                f"tensor rebuilt from {type(storage).__name__}, not a storage"
            )
        shape, stride = _int_tuple(shape, "size"), _int_tuple(stride, "stride")
        if len(shape) != len(stride) or not isinstance(offset, int) or offset < 0:
            raise CheckpointFormatError(f"bad tensor geometry: size {shape} stride {stride}")
        if not isinstance(dtype, np.dtype):
            raise CheckpointFormatError(f"bad tensor dtype {dtype!r}")
        if metadata is not None and not isinstance(metadata, dict):
            raise CheckpointFormatError(f"tensor metadata is a {type(metadata).__name__}")
        self.storage, self.dtype, self.offset = storage, dtype, offset
        self.shape, self.stride, self.metadata = shape, stride, metadata


class _PickledOrderedDict(OrderedDict):
    """What `collections.OrderedDict` builds. torch pickles a state dict's `_metadata`
    attribute as BUILD state; that state is checked and dropped (never set as attributes,
    which could shadow `items`/`get` for the code reading the result)."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise CheckpointFormatError(
                f"refusing pickle BUILD on collections.OrderedDict with a "
                f"{type(state).__name__} state (only an attribute dict is read, and dropped)"
            )


class _ScriptObject:
    """Stand-in for a TorchScript `__torch__.*` class: NEWOBJ makes an empty instance and
    BUILD may only hand it an attribute dict (submodules, parameters, plain values)."""

    __slots__ = ("attributes",)

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise CheckpointFormatError(
                f"TorchScript object state is a {type(state).__name__}, not an attribute dict"
            )
        self.attributes = state


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise CheckpointFormatError(f"bad tensor {what}: {value!r}")
    return tuple(value)


def _rebuild_tensor(storage, storage_offset, size, stride):
    dtype = storage.dtype if isinstance(storage, _Storage) else None
    return _TensorRef(storage, dtype, storage_offset, size, stride)


def _rebuild_tensor_v2(
    storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None
):
    dtype = storage.dtype if isinstance(storage, _Storage) else None
    return _TensorRef(storage, dtype, storage_offset, size, stride, metadata)


def _rebuild_tensor_v3(
    storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None
):
    if not isinstance(dtype, _DType):
        raise CheckpointFormatError(f"_rebuild_tensor_v3 with dtype {dtype!r}")
    return _TensorRef(storage, dtype.np, storage_offset, size, stride, metadata)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    if not isinstance(data, _TensorRef):
        raise CheckpointFormatError("parameter rebuilt from something that is not a tensor")
    return data


_REBUILDERS = (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter)


def _rebuild_from_type_v2(func, new_type, args, state):
    if (
        not isinstance(func, _Call)
        or func.func not in _REBUILDERS
        or not isinstance(new_type, _TensorClass)
        or not isinstance(args, tuple)
    ):
        raise CheckpointFormatError("_rebuild_from_type_v2 only rebuilds plain tensors/parameters")
    return func(*args)


def _torch_size(dims=()):
    return tuple(dims)


def _device(*args):
    return "device"


def _codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
    """`_codecs.encode` as protocol-2 pickles use it for `bytes` (latin1 round trip only)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise CheckpointFormatError(f"_codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode(encoding)


def _bytearray(data: bytes | str = b"", encoding: str = "latin-1") -> bytearray:
    """`bytearray` as protocols 2-4 pickle it: from its contents, never from a length (a
    file could otherwise ask for terabytes of zeros)."""
    if isinstance(data, str):
        data = _codecs_encode(data, encoding)
    if not isinstance(data, bytes):
        raise CheckpointFormatError(f"bytearray from a {type(data).__name__}, not its bytes")
    return bytearray(data)


# The callable globals a checkpoint pickle may name, as "module.name", and what the reader
# calls instead (fgjax never imports torch). Why each is needed:
_CALLABLES: dict[str, Callable[..., Any]] = {
    # the container of `torch.save(model.state_dict())`: REDUCE with no args, SETITEMS,
    # and BUILD of its `_metadata` attribute (checked and dropped)
    "collections.OrderedDict": _PickledOrderedDict,
    # plain values that protocol 2 can only spell as a call (protocol 4 has opcodes)
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.complex": complex,
    "builtins.slice": slice,
    "builtins.bytearray": _bytearray,
    "_codecs.encode": _codecs_encode,  # protocol-2 `bytes`
    # tensor reconstruction, as torch.save writes it (each validates its arguments)
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,  # dtypes without a storage class
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,  # tensor subclasses
    "torch.Size": _torch_size,
    "torch.device": _device,
}
# `new_type` of `_rebuild_from_type_v2`: only compared, never called.
_TENSOR_CLASSES = ("torch.Tensor", "torch._tensor.Tensor", "torch.nn.parameter.Parameter")


def _stand_ins() -> dict[str, Any]:
    """Map "module.name" to the inert object `find_class` returns for it. Every stand-in is
    `_Sealed` (refuses BUILD). Besides the callables: the storage classes persistent ids
    name (`torch.FloatStorage` ...) and the dtypes `_rebuild_tensor_v3` names
    (`torch.float32` ...)."""
    table: dict[str, Any] = {name: _Call(name, func) for name, func in _CALLABLES.items()}
    table.update((name, _TensorClass(name)) for name in _TENSOR_CLASSES)
    for name, dtype in STORAGE_DTYPES.items():
        table[f"torch.{name}"] = _StorageType(f"torch.{name}", dtype)
    for name in ("torch.storage.UntypedStorage", "torch.storage.TypedStorage"):
        table[name] = _StorageType(name, np.dtype(np.uint8))
    for name, dtype in _TORCH_DTYPES.items():
        table[f"torch.{name}"] = _DType(f"torch.{name}", dtype)
    return table


_STAND_INS = _stand_ins()
# The unpickler's whole attack surface: the only globals ("module.name", after mapping
# Python 2 names) a checkpoint may reference, namely the 15 `_CALLABLES`, the 3
# `_TENSOR_CLASSES`, `torch.<X>Storage` for `STORAGE_DTYPES` plus `torch.storage.
# UntypedStorage`/`TypedStorage`, and `torch.<dtype>` for `_TORCH_DTYPES`. Everything
# else, `builtins.getattr` to `os.system`, raises `UnsafeCheckpointError` naming it.
# tests/test_pth_allowlist.py pins this set literally. (TorchScript archives add
# `__torch__.*`, see `SafeUnpickler`.)
ALLOWED_GLOBALS: frozenset[str] = frozenset(_STAND_INS)

_EXT_OPCODES = ("EXT1", "EXT2", "EXT4")


def _refuse_extension_opcodes(file: BinaryIO) -> None:
    """Refuse EXT1/EXT2/EXT4 before unpickling `file` (position restored).

    The C unpickler answers an extension code it has resolved before (in this process, by
    any unpickler) from `copyreg`'s cache without calling `find_class`. Codes exist only
    once something registered them, so the opcode scan runs only then; torch never
    writes these opcodes."""
    if not copyreg._inverted_registry:  # empty: every EXT opcode fails as unregistered
        return
    start = file.tell()
    for op, arg, _ in pickletools.genops(file):
        if op.name in _EXT_OPCODES:
            module, name = copyreg._inverted_registry.get(arg, ("?", "?"))
            raise UnsafeCheckpointError(
                f"refusing pickle opcode {op.name} (extension code {arg}, global "
                f"'{module}.{name}'): checkpoints may not use the copyreg extension registry"
            )
    file.seek(start)


class SafeUnpickler(pickle._Unpickler):
    """Unpickler that resolves only `ALLOWED_GLOBALS`, each to an inert stand-in.

    The pure-Python unpickler: its memo is a dict, where the C one grows an array to the
    largest memo index a PUT names (a 9-byte pickle naming index 2^26 allocated 1.25 GB).
    Object pickles of checkpoints are small (tensor bytes live in separate records).

    Every way a pickle can name a callable (GLOBAL, STACK_GLOBAL, INST, OBJ) goes through
    `find_class`, and EXT* opcodes are refused; anything outside the allowlist raises
    `UnsafeCheckpointError` before it is imported, let alone called. BUILD on a stand-in
    or a tensor is refused. Storage persistent ids are answered by `storage_loader(pid)`.
    With `script_objects` (a TorchScript archive's data.pkl) every `__torch__.*` global
    resolves to the inert `_ScriptObject`.
    """

    def __init__(
        self,
        file: BinaryIO,
        storage_loader: Callable[[tuple], Any] | None = None,
        script_objects: bool = False,
    ):
        super().__init__(file)
        self._file = file
        self._storage_loader = storage_loader
        self._script_objects = script_objects

    def load(self) -> Any:
        _refuse_extension_opcodes(self._file)
        return super().load()

    def find_class(self, module: str, name: str) -> Any:
        if self._script_objects and (module == "__torch__" or module.startswith("__torch__.")):
            return _ScriptObject
        key = (module, name)  # protocol-2 pickles use Python 2 names (__builtin__.eval)
        if key in _compat_pickle.NAME_MAPPING:
            key = _compat_pickle.NAME_MAPPING[key]
        elif module in _compat_pickle.IMPORT_MAPPING:
            key = (_compat_pickle.IMPORT_MAPPING[module], name)
        qualified = f"{key[0]}.{key[1]}"
        if "." not in key[1] and qualified in _STAND_INS:  # no protocol-4 dotted paths
            return _STAND_INS[qualified]
        raise UnsafeCheckpointError(
            f"refusing to load global '{qualified}': a checkpoint may only reference "
            "tensor-rebuild functions, storage/dtype types and OrderedDict "
            "(this file would run code when loaded)"
        )

    def persistent_load(self, pid: Any) -> Any:
        if self._storage_loader is None:
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        return self._storage_loader(pid)


def _parse_storage_pid(pid: Any) -> tuple[_StorageType, str, int, tuple | None]:
    """('storage', type, key, location, numel[, view_metadata]) -> (type, key, numel, view)."""
    if not isinstance(pid, tuple) or not pid:
        raise CheckpointFormatError(f"bad persistent id {pid!r}")
    kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
    if kind == "module":
        raise UnsafeCheckpointError("checkpoint pickles a whole nn.Module; save its state_dict()")
    if kind != "storage" or len(pid) not in (5, 6):
        raise CheckpointFormatError(f"bad persistent id {pid!r}")
    storage_type, key, _location, numel = pid[1:5]
    view = pid[5] if len(pid) == 6 else None
    if not isinstance(storage_type, _StorageType):
        raise CheckpointFormatError(f"storage of unknown type {storage_type!r}")
    if isinstance(key, bytes):
        key = key.decode("ascii")
    if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
        raise CheckpointFormatError(f"bad storage record {pid!r}")
    return storage_type, key, numel, view


def _materialize(obj: Any, byteorder: str) -> Any:
    """Replace every `_TensorRef` in lists/tuples/dicts by an ndarray; refuse stand-ins."""
    if isinstance(obj, _TensorRef):
        return _to_array(obj, byteorder)
    if isinstance(obj, _ScriptObject):
        return _materialize(getattr(obj, "attributes", {}), byteorder)
    if isinstance(obj, OrderedDict):
        return OrderedDict((k, _materialize(v, byteorder)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _materialize(v, byteorder) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_materialize(v, byteorder) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialize(v, byteorder) for v in obj)
    if isinstance(obj, (set, frozenset)):  # no stand-in leaks out (tensors: unhashable)
        return type(obj)(_materialize(v, byteorder) for v in obj)
    if isinstance(obj, _Sealed):
        label = getattr(obj, "name", None) or type(obj).__name__
        raise CheckpointFormatError(f"checkpoint holds a bare {label}, not a tensor or value")
    return obj


def _to_array(ref: _TensorRef, byteorder: str) -> np.ndarray:
    dtype, itemsize = ref.dtype, ref.dtype.itemsize
    raw = ref.storage.data()
    if len(raw) % itemsize:
        raise CheckpointFormatError(f"storage {ref.storage.key}: {len(raw)} bytes, not {dtype}")
    count = len(raw) // itemsize
    if any(d == 0 for d in ref.shape):
        return np.zeros(ref.shape, dtype)
    last = ref.offset + sum((d - 1) * s for d, s in zip(ref.shape, ref.stride, strict=True))
    if last >= count:
        raise CheckpointFormatError(
            f"tensor on storage {ref.storage.key} reaches element {last} of {count}"
        )
    flat = _frombuffer(raw, dtype, byteorder)
    view = np.lib.stride_tricks.as_strided(
        flat[ref.offset :], ref.shape, [s * itemsize for s in ref.stride], writeable=False
    )
    out = np.array(view, dtype=dtype, copy=True)
    meta = ref.metadata or {}
    if meta.get("neg"):
        out = -out
    if meta.get("conj"):
        out = np.conj(out)
    return out


def _frombuffer(raw: memoryview, dtype: np.dtype, byteorder: str) -> np.ndarray:
    """Storage bytes written in `byteorder` as a native-order array of `dtype`."""
    if byteorder == sys.byteorder or dtype.itemsize == 1:
        return np.frombuffer(raw, dtype)
    order = ">" if byteorder == "big" else "<"
    if dtype.kind in "biuf":
        return np.frombuffer(raw, dtype.newbyteorder(order)).astype(dtype)
    if dtype.kind == "c":  # swap the real and imaginary halves separately
        half = np.dtype(f"{order}f{dtype.itemsize // 2}")
        return np.frombuffer(raw, half).astype(half.newbyteorder("=")).view(dtype)
    unsigned = np.dtype(f"{order}u{dtype.itemsize}")  # ml_dtypes floats
    return np.frombuffer(raw, unsigned).astype(unsigned.newbyteorder("=")).view(dtype)


# --------------------------------------------------------------------------- reading


def load_pth(path: PathLike) -> Any:
    """Unpickle a torch checkpoint safely; tensors become numpy arrays.

    Returns whatever was saved (usually a dict of arrays, or a dict holding one, e.g.
    `{'epoch': 3, 'state_dict': {...}}`; a TorchScript archive gives its top module's
    attributes, submodules as nested dicts). Raises `UnsafeCheckpointError` for any global
    outside the allowlist and `CheckpointFormatError` for malformed files; both name
    `path`.
    """
    path = os.fspath(path)
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        with open(path, "rb") as f:
            head = f.read(2)
        if head[:1] == b"\x80":
            return _load_legacy(path)
        if tarfile.is_tarfile(path):
            raise CheckpointFormatError(
                "tar-based torch checkpoints (torch < 0.4) are not supported"
            )
        raise CheckpointFormatError("not a torch checkpoint (neither a zip archive nor a pickle)")
    except UnsafeCheckpointError as e:
        raise UnsafeCheckpointError(f"{path}: {e}") from None
    except CheckpointFormatError as e:
        raise CheckpointFormatError(f"{path}: {e}") from None
    except (
        pickle.UnpicklingError,
        EOFError,
        zipfile.BadZipFile,
        struct.error,
        KeyError,
        IndexError,
        TypeError,
        ValueError,
        AttributeError,
        OverflowError,
        MemoryError,
        RecursionError,
    ) as e:
        raise CheckpointFormatError(f"{path}: corrupt torch checkpoint ({e!r})") from None


# Bounds that keep a small hostile file from allocating gigabytes before any check: an
# archive entry may expand at most MAX_EXPANSION times its compressed size unless it is at
# most MAX_UNBOUNDED_ENTRY bytes, and an object pickle (a few KB for a real state dict)
# holds at most MAX_PICKLE_BYTES.
MAX_EXPANSION = 64
MAX_UNBOUNDED_ENTRY = 256 * 2**20
MAX_PICKLE_BYTES = 32 * 2**20


def check_zip_entries(zf: zipfile.ZipFile) -> None:
    """Refuse (`CheckpointFormatError`) an entry whose uncompressed size is out of
    proportion to its compressed size (a zip bomb), before anything is decompressed."""
    for info in zf.infolist():
        ratio_ok = info.file_size <= MAX_EXPANSION * max(info.compress_size, 1)
        if info.file_size > MAX_UNBOUNDED_ENTRY and not ratio_ok:
            raise CheckpointFormatError(
                f"archive entry {info.filename!r} would expand from {info.compress_size} to "
                f"{info.file_size} bytes (more than {MAX_EXPANSION}x and "
                f"{MAX_UNBOUNDED_ENTRY >> 20} MiB): refused"
            )


def _load_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as zf:
        check_zip_entries(zf)
        names = zf.namelist()
        pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            if any(n.endswith(".npy") for n in names):
                raise CheckpointFormatError("this is a numpy .npz archive, not a torch checkpoint")
            raise CheckpointFormatError(
                f"zip archive without a single <root>/data.pkl: {names[:5]}"
            )
        root = pkls[0][: -len("/data.pkl")]
        byteorder = "little"
        if f"{root}/byteorder" in names:
            byteorder = zf.read(f"{root}/byteorder").decode("ascii").strip()
            if byteorder not in ("little", "big"):
                raise CheckpointFormatError(f"unknown byteorder {byteorder!r}")
        storages: dict[str, _Storage] = {}

        def fetch(key: str) -> bytes:
            record = f"{root}/data/{key}"
            declared = storages[key].numel * storages[key].dtype.itemsize
            if zf.getinfo(record).file_size != declared:
                raise CheckpointFormatError(
                    f"storage {key!r} declares {declared} bytes, its record {record!r} holds "
                    f"{zf.getinfo(record).file_size}"
                )
            return zf.read(record)

        def storage_loader(pid: Any) -> _Storage:
            storage_type, key, numel, _ = _parse_storage_pid(pid)
            if key not in storages:
                storages[key] = _Storage(key, storage_type.np, numel, fetch)
            return storages[key]

        script = any(n.startswith(f"{root}/code/") for n in names)
        if zf.getinfo(pkls[0]).file_size > MAX_PICKLE_BYTES:
            raise CheckpointFormatError(
                f"{pkls[0]} holds {zf.getinfo(pkls[0]).file_size} bytes, more than the "
                f"{MAX_PICKLE_BYTES >> 20} MiB an object pickle may (tensors are stored apart)"
            )
        obj = SafeUnpickler(io.BytesIO(zf.read(pkls[0])), storage_loader, script).load()
        return _materialize(obj, byteorder)


def _load_legacy(path: str) -> Any:
    with open(path, "rb") as f:
        magic = SafeUnpickler(f).load()
        if magic != LEGACY_MAGIC:
            raise CheckpointFormatError("pickle file without the torch magic number")
        protocol = SafeUnpickler(f).load()
        if protocol != LEGACY_PROTOCOL:
            raise CheckpointFormatError(f"unsupported legacy protocol {protocol!r}")
        sys_info = SafeUnpickler(f).load()
        little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
        byteorder = "little" if little else "big"
        storages: dict[str, _Storage] = {}
        views: dict[str, _Storage] = {}
        blobs: dict[str, bytes] = {}

        def storage_loader(pid: Any) -> _Storage:
            storage_type, key, numel, view = _parse_storage_pid(pid)
            if key not in storages:
                storages[key] = _Storage(key, storage_type.np, numel, blobs.__getitem__)
            if view is None:
                return storages[key]
            view_key, offset, size = view
            if view_key not in views:
                sub = _Storage(view_key, storage_type.np, size, blobs.__getitem__)
                sub.base, sub.byte_offset = storages[key], offset * storage_type.np.itemsize
                views[view_key] = sub
            return views[view_key]

        obj = SafeUnpickler(f, storage_loader).load()
        keys = SafeUnpickler(f).load()
        if not isinstance(keys, list):
            raise CheckpointFormatError("legacy checkpoint without a storage key list")
        fmt = "<q" if little else ">q"
        for key in keys:
            if key not in storages:
                raise CheckpointFormatError(f"storage {key!r} listed but never referenced")
            (numel,) = struct.unpack(fmt, f.read(8))
            nbytes = numel * storages[key].dtype.itemsize
            left = os.fstat(f.fileno()).st_size - f.tell()
            if numel < 0 or nbytes > left:  # checked before reading (or allocating) it
                raise CheckpointFormatError(
                    f"truncated storage {key!r}: {nbytes} bytes declared, {left} left"
                )
            blob = f.read(nbytes)
            blobs[key] = blob
        return _materialize(obj, byteorder)
