"""Load a llama.cpp mmproj GGUF file: metadata, hyper-parameters and lazily dequantised weights.

All parsing and dequantisation is done by the `gguf` package. This module adds what a loader needs on top:
bounds and consistency checks that turn gguf's assorted exceptions into one-line `GGUFError`s naming the file,
the projector-specific hyper-parameters (`hparams`), and a check of every tensor against the projector's table
(`arch_tensors`), chosen through the `projectors` registry.

The file stays memory-mapped. A weight is dequantised to float32 the first time `Weight.data()` is called and
cached from then on; F32 weights are read-only views of the mapping and cost no copy.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType, ReaderTensor
from gguf.gguf_reader import READER_SUPPORTED_VERSIONS
from gguf.quants import dequantize

from npggml.models.arch_tensors import TensorSpec, format_ne, pad4
from npggml.models.gguf_errors import (
    GGUFFileError,
    MalformedGGUFError,
    MissingTensorError,
    MmprojContentError,
    UnsupportedGGUFError,
)
from npggml.models.hparams import HParams, KeyValue, Metadata
from npggml.models.projectors import PROJECTORS

Q = GGMLQuantizationType
SUPPORTED_TYPES = (Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_K, Q.Q5_K, Q.Q6_K)
GGUF_MAGIC = b"GGUF"
HEADER_BYTES = 24  # magic, version, tensor count, key/value count
GGML_MAX_DIMS = 4
MAX_ELEMENTS = 1 << 40  # per tensor; far beyond any real mmproj, small enough that sizes cannot overflow


def ggml_type_name(qtype: GGMLQuantizationType) -> str:
    """ggml's own spelling of a type name: 'f32', 'q8_0', 'q4_K'."""
    name = qtype.name.lower()
    return name[:-2] + "_K" if name.endswith("_k") else name


SUPPORTED_TYPE_NAMES = ", ".join(ggml_type_name(t) for t in SUPPORTED_TYPES)
_VALUE_TYPE_IDS = frozenset(int(v) for v in GGUFValueType)


class _Truncated(Exception):
    def __init__(self, section: str, offset: int, end: int):
        self.section, self.offset, self.end = section, offset, end


class _CheckedReader(GGUFReader):
    """`GGUFReader` with bounds checks, so damaged files fail with a message saying what is wrong where.

    The parsing stays gguf's: these overrides of its internal steps (`_get`, `_get_field_parts`, `_build_*`,
    as in gguf-py 0.19) only check a step's input, note which section is being read, then call the original.
    """

    def __init__(self, path: str):
        self._path = path
        self._section = "header"
        try:
            super().__init__(path, "r")
        except GGUFFileError:
            raise
        except _Truncated as t:
            raise MalformedGGUFError(
                path, f"truncated: the {t.section} at byte {t.offset} runs past the end of the file "
                f"({self.data.size} bytes)", "a complete GGUF file") from None
        except (ValueError, KeyError, IndexError, TypeError, OverflowError) as e:
            detail = e.args[0] if e.args else type(e).__name__
            raise MalformedGGUFError(path, f"invalid {self._section}: {detail}",
                                     "a well-formed GGUF file") from None

    def _get(self, offset, dtype, count=1, override_order=None):
        end = int(offset) + np.dtype(dtype).itemsize * int(count)
        if end > self.data.size:
            raise _Truncated(self._section, int(offset), end)
        return super()._get(offset, dtype, count, override_order)

    def _get_field_parts(self, orig_offs, raw_type):
        if int(raw_type) not in _VALUE_TYPE_IDS:
            raise MalformedGGUFError(self._path, f"unknown value type id {int(raw_type)} in the {self._section}",
                                     f"a GGUF value type id {min(_VALUE_TYPE_IDS)} .. {max(_VALUE_TYPE_IDS)}")
        return super()._get_field_parts(orig_offs, raw_type)

    def _build_fields(self, offs, count):
        self._section = f"metadata ({int(count)} keys)"
        return super()._build_fields(offs, count)

    def _build_tensor_info(self, offs, count):
        self._section = f"tensor index ({int(count)} tensors)"
        return super()._build_tensor_info(offs, count)

    def _build_tensors(self, start_offs, fields):
        for info in fields:
            self._check_tensor_info(int(start_offs), info)
        self._section = "tensor data"
        super()._build_tensors(start_offs, fields)

    def _check_tensor_info(self, start: int, info) -> None:
        _, name_bytes, n_dims, dims, raw_type, offset = info.parts
        name = bytes(name_bytes).decode("utf-8")
        path = self._path
        if not 1 <= int(n_dims[0]) <= GGML_MAX_DIMS:
            raise MalformedGGUFError(path, f"tensor {name} has {int(n_dims[0])} dimensions",
                                     f"1 to {GGML_MAX_DIMS}")
        ne = [int(d) for d in dims]
        try:
            qtype = Q(int(raw_type[0]))
        except ValueError:
            raise UnsupportedGGUFError(path, f"tensor {name} has unknown ggml type id {int(raw_type[0])}",
                                       f"one of {SUPPORTED_TYPE_NAMES}") from None
        n_elements = math.prod(ne)
        if n_elements > MAX_ELEMENTS:
            raise MalformedGGUFError(path, f"tensor {name} has ne {format_ne(tuple(ne))}",
                                     f"at most {MAX_ELEMENTS} elements")
        block, type_size = GGML_QUANT_SIZES[qtype]
        if ne[0] % block:
            raise MalformedGGUFError(path, f"tensor {name} has ne0 = {ne[0]}",
                                     f"a multiple of the {ggml_type_name(qtype)} block size {block}")
        if int(offset[0]) % int(self.alignment):
            raise MalformedGGUFError(path, f"tensor {name} data offset {int(offset[0])} is misaligned",
                                     f"a multiple of {int(self.alignment)}")
        end = start + int(offset[0]) + n_elements // block * type_size
        if end > self.data.size:
            raise MalformedGGUFError(
                path, f"tensor {name} data ends at byte {end}, past the end of the file ({self.data.size} bytes)",
                "tensor data inside the file")


def open_gguf(path: str | os.PathLike[str]) -> GGUFReader:
    """Open and parse a GGUF container (no mmproj checks); raise a `GGUFError` for anything malformed."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise MalformedGGUFError(path, f"cannot read the file ({e.strerror})", "a readable GGUF file") from None
    if len(head) >= 4 and head[:4] != GGUF_MAGIC:
        raise MalformedGGUFError(path, f"not a GGUF file: magic {head[:4]!r}", repr(GGUF_MAGIC))
    if size < HEADER_BYTES:
        raise MalformedGGUFError(path, f"truncated: {size} bytes", f"at least the {HEADER_BYTES}-byte GGUF header")
    version = int.from_bytes(head[4:8], "little")
    if version & 0xFFFF == 0:
        raise UnsupportedGGUFError(path, "big-endian GGUF file", "a little-endian file")
    if version not in READER_SUPPORTED_VERSIONS:
        raise UnsupportedGGUFError(path, f"GGUF version {version}",
                                   " or ".join(str(v) for v in READER_SUPPORTED_VERSIONS))
    return _CheckedReader(path)


def read_metadata(reader: GGUFReader) -> dict[str, KeyValue]:
    """Every key of the file with its GGUF type name and Python value."""
    values = {}
    for name, f in reader.fields.items():
        if name.startswith("GGUF."):
            continue  # the reader's pseudo-fields for the header
        vtype = f.types[0].name
        if f.types[0] == GGUFValueType.ARRAY and len(f.types) > 1:
            vtype = f"ARRAY[{f.types[-1].name}]"
        values[name] = KeyValue(vtype, f.contents())
    return values


@dataclass(eq=False)
class Weight:
    """One tensor of the file. `data()` dequantises it to float32 once and caches the result."""

    name: str
    ne: tuple[int, int, int, int]  # ggml order, padded with 1s
    ggml_type: str
    nbytes: int
    used: bool
    _tensor: ReaderTensor = field(repr=False)
    _path: str = field(repr=False)
    _cache: np.ndarray | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, ...]:
        """NumPy shape of `data()`: reversed `ne` without the trailing 1s of `ne` (at least one dimension)."""
        ne = list(self.ne)
        while len(ne) > 1 and ne[-1] == 1:
            ne.pop()
        return tuple(reversed(ne))

    @property
    def n_elements(self) -> int:
        return math.prod(self.ne)

    def data(self) -> np.ndarray:
        if self._cache is None:
            self._cache = self._dequantize()
        return self._cache

    def release(self) -> None:
        """Drop the cached float32 array; the next `data()` dequantises again."""
        self._cache = None

    def _dequantize(self) -> np.ndarray:
        qtype = self._tensor.tensor_type
        if qtype not in SUPPORTED_TYPES:
            raise UnsupportedGGUFError(self._path, f"tensor {self.name} has type {self.ggml_type}",
                                       f"one of {SUPPORTED_TYPE_NAMES}")
        values = np.asarray(dequantize(self._tensor.data, qtype)).reshape(self.shape)
        if values.dtype != np.float32:
            values = values.astype(np.float32)
        values.flags.writeable = False
        return values


@dataclass(eq=False)
class Mmproj:
    path: str
    projector: str  # 'deepseekocr' | 'deepseekocr2'
    hparams: HParams
    sources: dict[str, str]  # hparam field -> 'key:<key>' | 'default' | 'override' | 'fixed' | 'tensor:<name>'
    weights: dict[str, Weight]  # every tensor of the file, in file order
    unused: list[str]  # tensors the graph builder does not use
    metadata: dict[str, KeyValue]
    gguf_version: int

    def get(self, name: str) -> Weight:
        weight = self.weights.get(name)
        if weight is None:
            raise MissingTensorError(self.path, f"no tensor {name}", f"it in this {self.projector} file")
        return weight

    def has(self, name: str) -> bool:
        return name in self.weights

    @property
    def n_params(self) -> int:
        return sum(w.n_elements for w in self.weights.values())


def load_mmproj(path: str | os.PathLike[str]) -> Mmproj:
    """Load and validate a DeepSeek-OCR v1/v2 mmproj GGUF; weights are dequantised lazily."""
    path = os.fspath(path)
    reader = open_gguf(path)
    meta = Metadata(path, read_metadata(reader))
    projector = _projector_type(meta)
    family = PROJECTORS[projector]
    tensors = {t.name: t for t in reader.tensors}

    def shape_of(name: str) -> tuple[int, int, int, int]:
        if name not in tensors:
            raise MissingTensorError(path, f"missing tensor {name}", f"it in a {projector} mmproj")
        return pad4(tuple(int(d) for d in tensors[name].shape))

    hparams, sources = family.read_hparams(meta, shape_of)
    specs = family.tensors(hparams)
    _check_tensors(path, projector, specs, tensors)
    used = {s.name for s in specs if s.used}
    weights = {
        t.name: Weight(t.name, shape_of(t.name), ggml_type_name(t.tensor_type), int(t.n_bytes), t.name in used,
                       t, path)
        for t in reader.tensors
    }
    return Mmproj(path, projector, hparams, sources, weights, [n for n, w in weights.items() if not w.used],
                  meta.values, int(reader.fields["GGUF.version"].parts[0][0]))


def _projector_type(meta: Metadata) -> str:
    arch = meta.get("general.architecture", "STRING")
    if arch != "clip":
        raise MmprojContentError(meta.path, f"general.architecture is {arch!r}", "'clip', an mmproj file")
    if "clip.has_vision_encoder" not in meta or not meta.get("clip.has_vision_encoder", "BOOL"):
        raise MmprojContentError(meta.path, "no vision encoder (clip.has_vision_encoder missing or false)",
                                 "clip.has_vision_encoder = true")
    projector = meta.get("clip.projector_type", "STRING")
    if projector not in PROJECTORS:
        known = ", ".join(repr(p) for p in PROJECTORS)
        raise MmprojContentError(meta.path, f"unsupported projector type {projector!r}", f"one of {known}")
    return projector


def _check_tensors(path: str, projector: str, specs: list[TensorSpec], tensors: dict[str, Any]) -> None:
    for spec in specs:
        t = tensors.get(spec.name)
        if t is None:
            if spec.required:
                raise MissingTensorError(path, f"missing tensor {spec.name}",
                                         f"ne {spec.describe()} in a {projector} mmproj")
            continue
        ne = tuple(int(d) for d in t.shape)
        if not spec.matches(ne):
            raise MmprojContentError(path, f"tensor {spec.name} has ne {format_ne(ne)}",
                                     f"{spec.describe()} for these {projector} hparams")
        if spec.used and t.tensor_type not in SUPPORTED_TYPES:
            raise UnsupportedGGUFError(path, f"tensor {spec.name} has type {ggml_type_name(t.tensor_type)}",
                                       f"one of {SUPPORTED_TYPE_NAMES}")
