"""Reader and writer for the IDX format that MNIST and Fashion-MNIST are published in.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions),
one big-endian uint32 per dimension, then the values in C order, big-endian. The files are
usually distributed gzip-compressed; :func:`read_idx` detects compression from the gzip magic
bytes rather than the file name, because renamed or already-decompressed copies are common.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from memaware.errors import DataError
from memaware.files import atomic_write_bytes

__all__ = ["read_idx", "write_idx"]

_GZIP_MAGIC = b"\x1f\x8b"

# IDX type code -> big-endian numpy dtype (0x0A is unassigned in the format).
_CODE_TO_DTYPE: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_KIND_SIZE_TO_CODE: dict[tuple[str, int], int] = {
    (dtype.kind, dtype.itemsize): code for code, dtype in _CODE_TO_DTYPE.items()
}


def read_idx(path: str | Path) -> npt.NDArray[Any]:
    """Read an IDX file (plain or gzip-compressed) into a writable, native-endian array.

    Raises:
        DataError: the file is missing, is not valid gzip, has an unknown magic number or
            type code, or its payload is shorter or longer than its header announces.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read IDX file {path}: {exc.strerror or exc}") from exc
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(
                f"{path} starts like a gzip file but its gzip stream is corrupt or truncated "
                f"({exc}); delete it and download it again"
            ) from exc

    if len(raw) < 4:
        raise DataError(
            f"{path} is too short to be an IDX file ({len(raw)} bytes, the header alone "
            "needs 4); the file is truncated or not IDX"
        )
    zero1, zero2, code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero1 != 0 or zero2 != 0 or code not in _CODE_TO_DTYPE:
        raise DataError(
            f"{path} is not an IDX file: bad magic number 0x{raw[:4].hex()} (expected 0x0000 "
            "then a type code 08, 09, 0b, 0c, 0d or 0e); check that the path points at an "
            "MNIST-style IDX file"
        )
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DataError(
            f"{path} is truncated: its header announces {ndim} dimensions but the file ends "
            f"after {len(raw)} bytes; download it again"
        )
    shape = struct.unpack(f">{ndim}I", raw[4:header_len])
    dtype = _CODE_TO_DTYPE[code]
    expected = int(np.prod(shape, dtype=object)) * dtype.itemsize
    actual = len(raw) - header_len
    if actual != expected:
        problem = "truncated" if actual < expected else "longer than its header says"
        raise DataError(
            f"{path} is {problem}: shape {tuple(shape)} of {dtype.newbyteorder('=').name} needs "
            f"{expected} payload bytes but the file holds {actual}; download it again"
        )
    # astype copies, which also makes the result writable (frombuffer over bytes is read-only).
    values = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(shape)
    return values.astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: npt.ArrayLike) -> None:
    """Write ``array`` as an IDX file, gzip-compressed when ``path`` ends in ``.gz``.

    The file is written to a temporary file in the same folder and renamed into place
    (:func:`memaware.files.atomic_write_bytes`), so readers never see a half-written file; it
    gets the permissions the umask gives a new file (0o644 under the usual 022). Supported
    dtypes are those IDX defines: uint8, int8, int16, int32, float32 and float64.

    Raises:
        DataError: the dtype has no IDX type code, a dimension does not fit the header, or
            the file cannot be written.
    """
    path = Path(path)
    values = np.asarray(array)
    code = _KIND_SIZE_TO_CODE.get((values.dtype.kind, values.dtype.itemsize))
    if code is None:
        raise DataError(
            f"cannot write {path}: IDX has no type for dtype {values.dtype} (it supports uint8, "
            "int8, int16, int32, float32, float64); cast the array first, e.g. labels to uint8"
        )
    if values.ndim > 255 or any(dim > 0xFFFFFFFF for dim in values.shape):
        raise DataError(f"cannot write {path}: shape {values.shape} does not fit an IDX header")
    header = bytes([0, 0, code, values.ndim]) + struct.pack(f">{values.ndim}I", *values.shape)
    payload = header + np.ascontiguousarray(values, dtype=_CODE_TO_DTYPE[code]).tobytes()
    if path.name.endswith(".gz"):
        # mtime=0 keeps the output byte-identical for identical input; level 6 is about eight
        # times faster than the default 9 on MNIST for a file only slightly larger.
        payload = gzip.compress(payload, compresslevel=6, mtime=0)

    try:
        atomic_write_bytes(path, payload)
    except OSError as exc:
        raise DataError(f"cannot write {path}: {exc.strerror or exc}; check the folder") from exc
