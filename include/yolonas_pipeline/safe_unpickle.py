"""A pickle reader for PyTorch checkpoints that never runs pickled code and never needs torch or numpy.

``torch.save`` pickles the checkpoint's structure into ``data.pkl`` and stores each tensor's bytes as a separate
record; a tensor appears in the pickle as a call to ``torch._utils._rebuild_tensor_v2`` whose first argument is a
*persistent id* naming its storage record. :class:`RestrictedUnpickler` resolves only an allow-list of globals,
each to a local stand-in: tensors become :class:`TensorMeta` (dtype, shape, storage key; the bytes are never read),
storage types :class:`StorageType`, numpy scalars (super-gradients stores class names as ``np.str_``) plain Python
values, numpy arrays :class:`NumpyArray`. Every other global (``os.system``,
``builtins.eval``, a pickled ``nn.Module`` class, ...) is refused with :class:`DisallowedGlobalError` naming it,
before anything is called: the only callables a pickle can reach are the stand-ins defined here.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
import struct
from collections import OrderedDict
from collections.abc import Callable
from typing import IO, Any, NamedTuple

from yolonas_pipeline.errors import CheckpointError


class DisallowedGlobalError(CheckpointError):
    """The pickle names a global outside the allow-list; :attr:`global_name` is ``module.qualname``."""

    def __init__(self, message: str, global_name: str) -> None:
        super().__init__(message)
        self.global_name = global_name


class _FrozenClass(type):
    """Metaclass refusing assignment to class attributes.

    A pickle's BUILD opcode sets attributes on whatever object is on its stack, including an allow-listed class it
    just named; without this it could rewrite, say, ``TensorMeta.shape`` for every later load in the process.
    """

    def __setattr__(cls, name: str, value: Any) -> None:
        raise TypeError(f"{cls.__name__} is read-only")

    def __delattr__(cls, name: str) -> None:
        raise TypeError(f"{cls.__name__} is read-only")


class _ReadOnly:
    """Base for the shared allow-listed instances: attributes are set once, in ``__init__``, then never."""

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise TypeError(f"{type(self).__name__} is read-only")

    def __delattr__(self, name: str) -> None:
        raise TypeError(f"{type(self).__name__} is read-only")


class _Function(_ReadOnly):
    """An allow-listed function, callable but immune to BUILD (a plain function's ``__defaults__`` is writable)."""

    __slots__ = ("function",)
    function: Callable[..., Any]

    def __init__(self, function: Callable[..., Any]) -> None:
        object.__setattr__(self, "function", function)

    def __call__(self, *args: Any) -> Any:
        return self.function(*args)

    def __repr__(self) -> str:
        return f"<allowed {self.function.__name__}>"


class StorageType(_ReadOnly):
    """Stand-in for ``torch.FloatStorage`` and friends: only the element dtype matters."""

    __slots__ = ("dtype",)
    dtype: str

    def __init__(self, dtype: str) -> None:
        object.__setattr__(self, "dtype", dtype)

    def __repr__(self) -> str:
        return f"StorageType({self.dtype})"


class _TensorArgs(NamedTuple):
    storage: tuple[Any, ...]  # the persistent id: ('storage', StorageType, key, location, numel[, view])
    storage_offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    requires_grad: Any = False
    backward_hooks: Any = None
    metadata: Any = None
    dtype_override: str | None = None


class TensorMeta(_TensorArgs, metaclass=_FrozenClass):
    """What the pickle says about a tensor: shape, stride, dtype and which storage record holds its bytes.

    The pickle's ``_rebuild_tensor_v2(storage, offset, size, stride, ...)`` call becomes this tuple directly (a
    tensor-heavy checkpoint has thousands, so no per-tensor Python code runs); fields are checked when read.
    """

    __slots__ = ()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.size)

    @property
    def dtype(self) -> str:
        if self.dtype_override:
            return self.dtype_override
        storage_type = self.storage[1] if len(self.storage) > 1 else None
        return storage_type.dtype if isinstance(storage_type, StorageType) else "unknown"

    @property
    def storage_key(self) -> str:
        return str(self.storage[2]) if len(self.storage) > 2 else ""

    def __repr__(self) -> str:
        return f"TensorMeta({self.dtype}, shape={list(self.size)})"


class NumpyDType(metaclass=_FrozenClass):
    """Stand-in for ``numpy.dtype``: the type string (``U3``, ``f4``, ...) and the byte order from its state."""

    __slots__ = ("byteorder", "spec")

    def __init__(self, spec: Any, align: bool = False, copy: bool = True) -> None:
        if not isinstance(spec, str):
            raise CheckpointError(f"unsupported numpy dtype spec {spec!r} in the checkpoint pickle")
        self.spec = spec
        self.byteorder = "="

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.byteorder = state[1]

    @property
    def kind(self) -> str:
        return self.spec.lstrip("<>|=")[:1]

    @property
    def little_endian(self) -> bool:
        return self.byteorder != ">"

    def __repr__(self) -> str:
        return f"NumpyDType({self.byteorder}{self.spec})"


class NumpyScalar:
    """A numpy scalar of a kind not turned into a Python value (e.g. long double): dtype and raw bytes."""

    __slots__ = ("data", "dtype")

    def __init__(self, dtype: NumpyDType, data: bytes) -> None:
        self.dtype, self.data = dtype, data

    def __repr__(self) -> str:
        return f"NumpyScalar({self.dtype.spec}, {self.data!r})"


class NumpyArray:
    """Stand-in for a pickled ``numpy.ndarray``: shape, dtype and the raw buffer (or the object list)."""

    __slots__ = ("data", "dtype", "fortran_order", "shape")

    def __init__(self) -> None:
        self.shape: tuple[int, ...] = ()
        self.dtype: NumpyDType | None = None
        self.fortran_order = False
        self.data: Any = b""

    def __setstate__(self, state: Any) -> None:
        # ndarray.__reduce__ state: (version, shape, dtype, is_fortran, rawdata)
        if not (isinstance(state, tuple) and len(state) == 5):
            raise CheckpointError("malformed numpy array state in the checkpoint pickle")
        _, shape, dtype, fortran, data = state
        self.shape, self.dtype, self.fortran_order, self.data = tuple(shape), dtype, bool(fortran), data

    def __repr__(self) -> str:
        return f"NumpyArray({self.dtype!r}, shape={list(self.shape)})"


class _NdarrayMarker(metaclass=_FrozenClass):
    """``numpy.ndarray`` as a class reference; only :func:`_np_reconstruct` accepts it."""


_FLOAT_FORMATS = {2: "e", 4: "f", 8: "d"}


def _np_scalar(dtype: Any, data: Any = b"") -> Any:
    """``numpy.core.multiarray.scalar``: decode the common kinds to Python values without numpy."""
    if not isinstance(dtype, NumpyDType) or not isinstance(data, bytes):
        raise CheckpointError("malformed numpy scalar in the checkpoint pickle")
    kind, little = dtype.kind, dtype.little_endian
    order = "<" if little else ">"
    if kind == "U":
        return data.decode("utf-32-le" if little else "utf-32-be", errors="replace").rstrip("\x00")
    if kind == "S":
        return data.rstrip(b"\x00")
    if kind == "b" and len(data) == 1:
        return data != b"\x00"
    if kind in ("i", "u") and len(data) in (1, 2, 4, 8):
        return int.from_bytes(data, "little" if little else "big", signed=kind == "i")
    if kind == "f" and len(data) in _FLOAT_FORMATS:
        return struct.unpack(order + _FLOAT_FORMATS[len(data)], data)[0]
    if kind == "c" and len(data) in (8, 16):
        fmt = _FLOAT_FORMATS[len(data) // 2]
        real, imag = struct.unpack(order + fmt * 2, data)
        return complex(real, imag)
    return NumpyScalar(dtype, data)


def _np_reconstruct(cls: Any, shape: Any = (0,), dtype_char: Any = b"b") -> NumpyArray:
    if cls is not _NdarrayMarker:
        raise CheckpointError("numpy _reconstruct called with something other than numpy.ndarray")
    return NumpyArray()


def _codecs_encode(text: Any, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode``: protocol-2 pickles spell ``bytes`` as ``encode(str, 'latin1')``; allow only that."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "iso-8859-1"):
        raise CheckpointError(f"refusing _codecs.encode with encoding {encoding!r} in the checkpoint pickle")
    return text.encode("latin1")


def _rebuild_tensor_v3(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any,
    backward_hooks: Any,
    dtype: Any,
    metadata: Any = None,
) -> TensorMeta:
    override = dtype.name if isinstance(dtype, TorchDType) else None
    return TensorMeta(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata, override)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None, state: Any = None) -> Any:
    return data  # an nn.Parameter is its tensor for inspection purposes


class TorchDType(_ReadOnly):
    """Stand-in for ``torch.float32`` etc. when a dtype object itself is pickled."""

    __slots__ = ("name",)
    name: str

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "name", name)

    def __repr__(self) -> str:
        return f"torch.{self.name}"


def _torch_size(values: Any = ()) -> tuple[int, ...]:
    return tuple(values)


def _torch_device(kind: Any, index: Any = None) -> str:
    return f"{kind}:{index}" if index is not None else str(kind)


# torch's legacy typed storage classes and the element dtype each holds.
_STORAGE_DTYPES = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
    "QInt8Storage": "qint8",
    "QUInt8Storage": "quint8",
    "QInt32Storage": "qint32",
    "QUInt4x2Storage": "quint4x2",
    "QUInt2x4Storage": "quint2x4",
    "UntypedStorage": "uint8",
}
_TORCH_DTYPES = (
    "float32",
    "float64",
    "float16",
    "bfloat16",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "bool",
    "complex64",
    "complex128",
    "float8_e4m3fn",
    "float8_e5m2",
    "uint16",
    "uint32",
    "uint64",
)

#: (module, qualname) -> the local stand-in the pickle gets instead of the real global.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch._utils", "_rebuild_tensor_v2"): TensorMeta,
    ("torch._utils", "_rebuild_tensor_v3"): _Function(_rebuild_tensor_v3),
    ("torch._utils", "_rebuild_parameter"): _Function(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _Function(_rebuild_parameter),
    ("torch", "Size"): _Function(_torch_size),
    ("torch", "device"): _Function(_torch_device),
    ("_codecs", "encode"): _Function(_codecs_encode),
    ("numpy", "dtype"): NumpyDType,
    ("numpy", "ndarray"): _NdarrayMarker,
    **{(module, "scalar"): _Function(_np_scalar) for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{
        (module, "_reconstruct"): _Function(_np_reconstruct)
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    },
    **{("torch", name): StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()},
    **{("torch", name): TorchDType(name) for name in _TORCH_DTYPES},
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickle a torch ``data.pkl`` resolving only :data:`ALLOWED_GLOBALS`; tensors become :class:`TensorMeta`.

    :param source: names the file (and member) in error messages.
    """

    def __init__(self, file: IO[bytes], *, source: str) -> None:
        super().__init__(file, encoding="utf-8")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles spell some globals the Python 2 way (__builtin__.exec); name them as Python 3 does.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            pass
        qualified = f"{module}.{name}"
        hint = ""
        if module.startswith("__torch__"):
            hint = " (this is a TorchScript archive written by torch.jit.save, not a training checkpoint)"
        elif module.split(".")[0] in ("super_gradients", "torch") and name[:1].isupper():
            hint = " (the file pickles a whole object such as an nn.Module; save its state_dict() instead)"
        raise DisallowedGlobalError(
            f"{self.source}: refusing to unpickle global {qualified}{hint}; a checkpoint may only contain tensors, "
            "storages, (ordered) dicts, lists and numpy scalars, and loading this file with "
            "torch.load(weights_only=False) would call it",
            qualified,
        )

    # A storage's persistent id ('storage', StorageType, key, location, numel[, view_metadata]) stands for the
    # storage itself; ``tuple`` keeps it as data without a Python call per tensor. Nothing in it is callable.
    persistent_load = staticmethod(tuple)


def restricted_load(data: bytes | IO[bytes], *, source: str) -> Any:
    """Unpickle one object from ``data`` with :class:`RestrictedUnpickler`; every failure is a CheckpointError."""
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    return _guarded(RestrictedUnpickler(stream, source=source).load, source)


def _guarded(load: Callable[[], Any], source: str) -> Any:
    try:
        return load()
    except CheckpointError:
        raise
    except RecursionError as exc:
        raise CheckpointError(f"{source}: the pickle nests too deeply to be a checkpoint") from exc
    except (
        pickle.UnpicklingError,
        EOFError,
        TypeError,
        ValueError,
        AttributeError,
        IndexError,
        KeyError,
        struct.error,
        OverflowError,
        MemoryError,
    ) as exc:
        raise CheckpointError(f"{source}: not a valid torch checkpoint pickle ({type(exc).__name__}: {exc})") from exc
