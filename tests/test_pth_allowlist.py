"""The restricted unpickler of `fgjax.weights.pth_reader` against its allowlist.

The allowed globals are pinned literally (adding `builtins.getattr` fails here), and
hand-assembled attack pickles, protocol 2 (GLOBAL, Python 2 names) and 4 (STACK_GLOBAL),
go through every path that unpickles: a torch zip checkpoint, a TorchScript archive and
each of the legacy stream's five pickles. Each live payload creates a canary file when
plain `pickle.loads` runs it (checked first, so the "canary never exists" asserts are not
vacuous); the reader must refuse it with an error naming the global and the file.
"""

from __future__ import annotations

import _compat_pickle
import copyreg
import io
import os
import pickle
import shlex
import struct
import subprocess
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from fgjax.weights.pth_reader import (
    ALLOWED_GLOBALS,
    LEGACY_MAGIC,
    LEGACY_PROTOCOL,
    CheckpointFormatError,
    SafeUnpickler,
    UnsafeCheckpointError,
    load_pth,
)
from fgjax.weights.pth_writer import _PickleWriter

_DTYPES = (
    "float64 double float32 float float16 half bfloat16 float8_e4m3fn float8_e5m2 "
    "float8_e4m3fnuz float8_e5m2fnuz int64 long int32 int int16 short int8 uint8 uint16 "
    "uint32 uint64 bool complex64 cfloat complex128 cdouble"
).split()
_STORAGES = (
    "DoubleStorage FloatStorage HalfStorage BFloat16Storage LongStorage IntStorage "
    "ShortStorage CharStorage ByteStorage BoolStorage ComplexFloatStorage "
    "ComplexDoubleStorage UntypedStorage"
).split()
EXPECTED_GLOBALS = frozenset(
    {
        "collections.OrderedDict",
        "builtins.set",
        "builtins.frozenset",
        "builtins.complex",
        "builtins.slice",
        "builtins.bytearray",
        "_codecs.encode",
        "torch._utils._rebuild_tensor",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_tensor_v3",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state",
        "torch._tensor._rebuild_from_type_v2",
        "torch.Size",
        "torch.device",
        "torch.Tensor",
        "torch._tensor.Tensor",
        "torch.nn.parameter.Parameter",
        "torch.storage.UntypedStorage",
        "torch.storage.TypedStorage",
        *(f"torch.{name}" for name in _STORAGES + _DTYPES),
    }
)


# --------------------------------------------------------------------------- a tiny assembler


@dataclass(frozen=True)
class G:  # a global, GLOBAL (protocol 2, Python 2 names) or STACK_GLOBAL (protocol 4)
    module: str
    name: str


@dataclass(frozen=True)
class Call:  # REDUCE
    func: Any
    args: tuple


@dataclass(frozen=True)
class Build:  # BUILD
    obj: Any
    state: Any


@dataclass(frozen=True)
class Put:  # the value, memoized as `slot`
    slot: int
    value: Any


@dataclass(frozen=True)
class Get:
    slot: int


def call(func: Any, *args: Any) -> Call:
    return Call(func, args)


def assemble(node: Any, proto: int) -> bytes:
    out = bytearray(b"\x80" + bytes([proto]))

    def emit(v: Any) -> None:
        if isinstance(v, G):
            module, name = v.module, v.name
            if proto >= 4:
                for s in (module, name):
                    raw = s.encode()
                    out.extend(b"\x8c" + bytes([len(raw)]) + raw)  # SHORT_BINUNICODE
                out.extend(b"\x93")  # STACK_GLOBAL
                return
            if (module, name) in _compat_pickle.REVERSE_NAME_MAPPING:
                module, name = _compat_pickle.REVERSE_NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.REVERSE_IMPORT_MAPPING:
                module = _compat_pickle.REVERSE_IMPORT_MAPPING[module]
            out.extend(f"c{module}\n{name}\n".encode())
        elif isinstance(v, Call):
            emit(v.func)
            emit(v.args)
            out.extend(b"R")
        elif isinstance(v, Build):
            emit(v.obj)
            emit(v.state)
            out.extend(b"b")
        elif isinstance(v, Put):
            emit(v.value)
            out.extend(b"q" + bytes([v.slot]))  # BINPUT
        elif isinstance(v, Get):
            out.extend(b"h" + bytes([v.slot]))  # BINGET
        elif v is None:
            out.extend(b"N")
        elif isinstance(v, bool):
            out.extend(b"\x88" if v else b"\x89")
        elif isinstance(v, int):
            raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
            out.extend(b"\x8a" + bytes([len(raw)]) + raw)  # LONG1
        elif isinstance(v, str):
            raw = v.encode()
            out.extend(b"X" + struct.pack("<I", len(raw)) + raw)
        elif isinstance(v, bytes):
            if proto >= 3:
                out.extend(b"B" + struct.pack("<I", len(v)) + v)
            else:  # what pickle itself writes for bytes in protocol 2
                emit(call(G("_codecs", "encode"), v.decode("latin1"), "latin1"))
        elif isinstance(v, (tuple, list, dict)):
            out.extend(b"(")
            for item in v.items() if isinstance(v, dict) else v:
                for x in item if isinstance(v, dict) else (item,):
                    emit(x)
            out.extend({tuple: b"t", list: b"l", dict: b"d"}[type(v)])
        else:
            raise TypeError(type(v))

    emit(node)
    return bytes(out + b".")


# --------------------------------------------------------------------------- payloads


def _live_payloads(canary: os.PathLike, proto: int) -> dict[str, Any]:
    """Name of the first global each payload resolves -> payload that creates `canary`
    (the dotted names walk attributes, which pickle does from protocol 4 on)."""
    touch = f"touch {shlex.quote(str(canary))}"
    code = f"open({str(canary)!r}, 'w').close()"
    importer = G("builtins", "__import__")
    payloads = {
        "builtins.getattr": call(
            call(G("builtins", "getattr"), call(importer, "os"), "system"), touch
        ),
        # __import__ resolved first: memoize os, then getattr(os, 'system')(touch)
        "builtins.__import__": (
            Put(0, call(importer, "os")),
            call(call(G("builtins", "getattr"), Get(0), "system"), touch),
        ),
        "operator.attrgetter": call(
            call(call(G("operator", "attrgetter"), "system"), call(importer, "os")), touch
        ),
        "functools.partial": call(call(G("functools", "partial"), G("os", "system"), touch)),
        # _reconstructor(cls, base, state) runs base.__init__(obj, state)
        "copyreg._reconstructor": call(
            G("copyreg", "_reconstructor"),
            G("subprocess", "Popen"),
            G("subprocess", "Popen"),
            ["touch", str(canary)],
        ),
        "os.system": call(G("os", "system"), touch),
        "posix.system": call(G("posix", "system"), touch),
        "subprocess.Popen": call(G("subprocess", "Popen"), ["touch", str(canary)]),
        "builtins.eval": call(G("builtins", "eval"), code),
        "builtins.exec": call(G("builtins", "exec"), code),
    }
    if proto < 4:
        return payloads
    return payloads | {
        # protocol-4 dotted names walk attributes: os.path is posixpath, which imports os
        "os.path.os.system": call(G("os", "path.os.system"), touch),
        # a method reached through an allowed class
        "collections.OrderedDict.fromkeys": (
            call(G("collections", "OrderedDict.fromkeys"), ["k"]),
            call(G("builtins", "exec"), code),
        ),
    }


def _dead_payloads(canary: os.PathLike) -> dict[str, tuple[Any, type, str]]:
    """Payloads needing torch to run, or calling allowed globals with hostile arguments:
    name -> (payload, error, text the error names)."""
    touch = f"touch {shlex.quote(str(canary))}"
    live = assemble(call(G("os", "system"), touch), 2)
    rebuild_v2 = G("torch._utils", "_rebuild_tensor_v2")
    return {
        # torch's own nested pickle: torch.load of the bytes
        "nested load": (
            call(G("torch.storage", "_load_from_bytes"), live),
            UnsafeCheckpointError,
            "'torch.storage._load_from_bytes'",
        ),
        "rebuild_from_type func": (
            call(
                G("torch._tensor", "_rebuild_from_type_v2"),
                G("builtins", "set"),
                G("torch", "Tensor"),
                (touch,),
                {},
            ),
            CheckpointFormatError,
            "torch._tensor._rebuild_from_type_v2",
        ),
        "tensor from a string": (
            call(rebuild_v2, touch, 0, (1,), (1,)),
            CheckpointFormatError,
            "torch._utils._rebuild_tensor_v2",
        ),
        "bytearray of a length": (
            call(G("builtins", "bytearray"), 2**62),
            CheckpointFormatError,
            "builtins.bytearray",
        ),
        "BUILD on a rebuild function": (
            Build(rebuild_v2, (None, {"__defaults__": (False, None, touch)})),
            CheckpointFormatError,
            "BUILD on torch._utils._rebuild_tensor_v2",
        ),
        "BUILD on a storage class": (
            Build(G("torch", "FloatStorage"), {"np": touch}),
            CheckpointFormatError,
            "BUILD on torch.FloatStorage",
        ),
        "BUILD slot state on an OrderedDict": (
            Build(call(G("collections", "OrderedDict")), (None, {"items": G("builtins", "set")})),
            CheckpointFormatError,
            "BUILD on collections.OrderedDict",
        ),
    }


def _zip(payload: bytes, script: bool = False, storage: bytes | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", payload)
        zf.writestr("archive/byteorder", "little")
        if script:  # a TorchScript archive: `__torch__.*` resolves, the code is never read
            zf.writestr("archive/code/__torch__/m.py", "raise SystemExit\n")
        if storage is not None:
            zf.writestr("archive/data/0", storage)
    return buf.getvalue()


_SYS_INFO = {"protocol_version": 1001, "little_endian": True}


def _legacy(
    pickles: list[bytes | None], keys: list[str] | None = None, storage: bytes = b""
) -> bytes:
    """The legacy stream: magic, protocol, sys_info, object, storage keys, then each
    storage as an int64 count and its bytes; `None` entries take the normal value."""
    normal = [LEGACY_MAGIC, LEGACY_PROTOCOL, _SYS_INFO, {}, keys or []]
    parts = [
        p if p is not None else pickle.dumps(v, 2) for p, v in zip(pickles, normal, strict=True)
    ]
    blobs = b"".join(struct.pack("<q", len(storage)) + storage for _ in keys or [])
    return b"".join(parts) + blobs


def _layouts(payload: bytes) -> dict[str, bytes]:
    layouts = {"zip": _zip(payload), "torchscript": _zip(payload, script=True)}
    for i, what in enumerate(["magic", "protocol", "sys_info", "object", "keys"]):
        layouts[f"legacy-{what}"] = _legacy([payload if j == i else None for j in range(5)])
    return layouts


def _assert_refused(tmp_path, payload, canary, error, named) -> int:
    """Load `payload` in every layout: `error` naming `named` and the file, no canary."""
    count = 0
    for layout, content in _layouts(payload).items():
        path = tmp_path / f"{layout}.pth"
        path.write_bytes(content)
        want = (error, named)
        if layout == "legacy-magic" and payload[:1] != b"\x80":  # protocol 0/1: not read
            want = (CheckpointFormatError, "not a torch checkpoint")
        with pytest.raises(want[0]) as err:
            load_pth(path)
        assert want[1] in str(err.value) and str(path) in str(err.value), (layout, err.value)
        assert not canary.exists(), layout
        count += 1
    return count


# --------------------------------------------------------------------------- tests


def test_allowlist_is_exactly_the_documented_set_and_each_refuses_build(tmp_path):
    assert ALLOWED_GLOBALS == EXPECTED_GLOBALS
    unpickler = SafeUnpickler(io.BytesIO(b""))
    for qualified in EXPECTED_GLOBALS:
        module, name = qualified.rsplit(".", 1)
        assert unpickler.find_class(module, name) is not None
        with pytest.raises(UnsafeCheckpointError, match=f"'{qualified}.x'"):
            unpickler.find_class(module, f"{name}.x")  # no attribute walks from them
        top, rest = qualified.split(".", 1)
        if "." in rest:  # one spelling only: not `torch` + `_utils._rebuild_tensor_v2`
            with pytest.raises(UnsafeCheckpointError, match=f"'{qualified}'"):
                unpickler.find_class(top, rest)
        for proto in (2, 4):  # BUILD on the stand-in itself (it would persist across loads)
            payload = assemble(Build(G(module, name), {"__call__": G("builtins", "set")}), proto)
            with pytest.raises(CheckpointFormatError, match=f"BUILD on {qualified}"):
                SafeUnpickler(io.BytesIO(payload)).load()
    for neighbour in ("builtins.getattr", "torch.load", "collections.defaultdict"):
        with pytest.raises(UnsafeCheckpointError, match=f"'{neighbour}'"):
            unpickler.find_class(*neighbour.rsplit(".", 1))
    with pytest.raises(UnsafeCheckpointError, match="'__torch__.m.M'"):
        unpickler.find_class("__torch__.m", "M")  # only inside a TorchScript archive


def test_payloads_are_live_under_plain_pickle(tmp_path):
    """Positive control: plain pickle runs each payload, creating its canary."""
    for proto in (2, 4):
        for name in _live_payloads(tmp_path / "x", proto):
            canary = tmp_path / f"{name}-{proto}"
            result = pickle.loads(assemble(_live_payloads(canary, proto)[name], proto))
            if isinstance(result, subprocess.Popen):
                result.wait()
            assert canary.exists(), (name, proto)


@pytest.mark.parametrize("proto", [2, 4])
def test_attacks_are_refused_naming_the_global_and_never_run(tmp_path, proto):
    canary = tmp_path / "canary"
    tried = 0
    for name, node in _live_payloads(canary, proto).items():
        payload = assemble(node, proto)
        tried += _assert_refused(tmp_path, payload, canary, UnsafeCheckpointError, f"'{name}'")
    for node, error, named in _dead_payloads(canary).values():
        tried += _assert_refused(tmp_path, assemble(node, proto), canary, error, named)
    assert tried == 7 * (len(_live_payloads(canary, proto)) + len(_dead_payloads(canary)))


class _Evil:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


def test_pickler_written_and_protocol_0_1_attacks_are_refused(tmp_path):
    """What pickle.dumps writes (FRAME, MEMOIZE, nested containers), and INST / OBJ."""
    canary = tmp_path / "canary"
    touch = f"touch {shlex.quote(str(canary))}"
    code = f"open({str(canary)!r}, 'w').close()"
    payloads = {
        "posix.system": pickle.dumps(_Evil(os.system, touch), protocol=2),
        "builtins.exec": pickle.dumps({"w": [1, _Evil(exec, code)]}, protocol=4),
        "os.system": b"(S" + repr(touch).encode() + b"\nios\nsystem\n.",  # INST
        "subprocess.getoutput": b"(csubprocess\ngetoutput\nS" + repr(touch).encode() + b"\no.",
    }
    for name, payload in payloads.items():
        pickle.loads(payload)  # live
        assert canary.exists(), name
        canary.unlink()
        _assert_refused(tmp_path, payload, canary, UnsafeCheckpointError, f"'{name}'")


def test_extension_codes_cannot_skip_find_class(tmp_path):
    """EXT opcodes are refused, also once resolved: the C unpickler answers a code it met
    before (by any unpickler in the process) from copyreg's cache, without find_class."""
    canary = tmp_path / "canary"
    copyreg.add_extension("os", "system", 0x7ABE)
    try:
        ext = b"\x80\x02\x83" + struct.pack("<H", 0x7ABE)  # EXT2
        payload = ext + assemble((f"touch {shlex.quote(str(canary))}",), 2)[2:-1] + b"R."
        assert _assert_refused(tmp_path, payload, canary, UnsafeCheckpointError, "'os.system'")
        assert pickle.loads(ext + b".") is os.system  # fills copyreg._extension_cache
        assert _assert_refused(tmp_path, payload, canary, UnsafeCheckpointError, "'os.system'")
        with pytest.raises(UnsafeCheckpointError, match="opcode EXT2"):
            load_pth(tmp_path / "zip.pth")
    finally:
        copyreg.remove_extension("os", "system", 0x7ABE)


def test_build_on_allowed_objects_cannot_shadow_or_rewrite(tmp_path):
    # A state dict's BUILD attribute dict (torch's `_metadata`) is dropped: it cannot
    # shadow `items`/`get` of the OrderedDict the caller iterates.
    hostile = {"_metadata": {}, "items": G("builtins", "set"), "get": G("builtins", "set")}
    od = Build(call(G("collections", "OrderedDict"), [("w", 1)]), hostile)
    for proto in (2, 4):
        path = tmp_path / f"od{proto}.pth"
        path.write_bytes(_zip(assemble(od, proto)))
        back = load_pth(path)
        assert type(back) is OrderedDict and list(back.items()) == [("w", 1)]
        assert back.get("w") == 1 and vars(back) == {}
    # A TorchScript object takes only an attribute dict.
    script = Build(call(G("__torch__.m", "M")), (None, {"__class__": G("builtins", "set")}))
    path = tmp_path / "script.pt"
    path.write_bytes(_zip(assemble(script, 2), script=True))
    with pytest.raises(CheckpointFormatError, match="TorchScript object state is a tuple"):
        load_pth(path)


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_a_pickle_inside_a_storage_is_data(tmp_path, layout):
    canary = tmp_path / "canary"
    hidden = assemble(call(G("os", "system"), f"touch {shlex.quote(str(canary))}"), 2)
    writer = _PickleWriter()
    writer.tensor("ByteStorage", "0", np.zeros(len(hidden), np.uint8))
    writer.out += b"."
    path = tmp_path / "storage.pth"
    if layout == "zip":
        path.write_bytes(_zip(bytes(writer.out), storage=hidden))
    else:
        path.write_bytes(_legacy([None, None, None, bytes(writer.out), None], ["0"], hidden))
    back = load_pth(path)
    assert back.dtype == np.uint8 and back.tobytes() == hidden
    assert not canary.exists()


def test_stand_ins_never_leak_and_loops_are_format_errors(tmp_path):
    """The caller gets plain values: an allowed global itself, also inside a set, is
    refused; a self-referencing list (l = [l]) is a format error, not a RecursionError."""
    cases = {
        "bare": (assemble(G("builtins", "set"), 2), "bare builtins.set"),
        "in a set": (assemble(call(G("builtins", "set"), [G("torch", "float32")]), 2), "bare"),
        "loop": (b"\x80\x02]q\x00h\x00a.", "corrupt"),
    }
    for name, (payload, message) in cases.items():
        path = tmp_path / f"{name}.pth"
        path.write_bytes(_zip(payload))
        with pytest.raises(CheckpointFormatError, match=message):
            load_pth(path)
