"""The parquet-format Thrift structures (fieldcrypt/format/parquet.thrift through thriftpy2), decoded strictly.

Strict means: a read past the end of the bytes given is an error (thriftpy2's memory buffer would return
short reads), and a field the IDL does not know is refused instead of skipped, because re-encoding a
footer that silently lost a field would write a file that claims less than its pages hold.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import thriftpy2
from thriftpy2.protocol.compact import TCompactProtocol
from thriftpy2.thrift import TException
from thriftpy2.transport.memory import TMemoryBuffer

from fieldcrypt.errors import InputError, SpliceUnsupported

# module_name must end in _thrift for thriftpy2; loaded once, at import.
parquet: Any = thriftpy2.load(
    str(Path(__file__).resolve().parent.parent / "parquet.thrift"), module_name="fieldcrypt_parquet_thrift"
)


class _Truncated(Exception):
    """A Thrift value runs past the end of the bytes it was read from."""


class _UnknownField(Exception):
    def __init__(self, struct_name: str, field_id: int) -> None:
        super().__init__(struct_name, field_id)
        self.struct_name = struct_name
        self.field_id = field_id


class _BoundedReader:
    """The transport thriftpy2 reads from: bytes with a cursor that refuses to read past their end."""

    def __init__(self, data: bytes | memoryview) -> None:
        # bytes, not a memoryview: thriftpy2 reads a byte or a few at a time, and slicing bytes makes one
        # object per read where a view makes two (the slice, then its copy).
        self._data = bytes(data)
        self._size = len(self._data)
        self.position = 0

    def read(self, size: int) -> bytes:
        start = self.position
        end = start + size
        if size < 0 or end > self._size:
            raise _Truncated
        self.position = end
        return self._data[start:end]


class _StrictCompactProtocol(TCompactProtocol):
    """thriftpy2's compact protocol, except that skipping a field (unknown id, or a known id with another
    wire type) raises instead: the only place thriftpy2 skips is where a field would be lost."""

    def __init__(self, transport: _BoundedReader) -> None:
        super().__init__(transport, decode_response=False)  # type: ignore[no-untyped-call]
        self._reading: list[str] = []

    def read_struct(self, obj: Any) -> None:
        self._reading.append(type(obj).__name__)
        try:
            super().read_struct(obj)  # type: ignore[no-untyped-call]
        finally:
            self._reading.pop()

    def skip(self, ttype: int) -> None:
        raise _UnknownField(self._reading[-1] if self._reading else "?", self._last_fid)


def decode(struct_type: Any, data: bytes | memoryview, what: str) -> tuple[Any, int]:
    """One `struct_type` decoded from the start of `data`, and how many bytes it took.

    `what` names the structure and its file in errors. A field the IDL does not know raises
    SpliceUnsupported; bytes that are not a valid structure raise InputError.
    """
    reader = _BoundedReader(data)
    protocol = _StrictCompactProtocol(reader)
    value = struct_type()
    try:
        protocol.read_struct(value)
    except _UnknownField as unknown:
        raise SpliceUnsupported(
            f"{what}: field {unknown.field_id} of {unknown.struct_name} is not in the parquet-format IDL "
            "fieldcrypt knows (a newer writer?); it cannot be carried over"
        ) from None
    except _Truncated:
        raise InputError(f"{what}: corrupt Parquet: a Thrift value runs past the end of its bytes") from None
    except (TException, KeyError, ValueError, TypeError, struct.error, RecursionError) as exc:
        raise InputError(f"{what}: corrupt Parquet: not a valid Thrift {type(value).__name__} ({exc})") from None
    return value, reader.position


def encode(value: Any) -> bytes:
    """The compact-protocol bytes of one structure, as a Parquet writer stores them."""
    buffer = TMemoryBuffer()
    TCompactProtocol(buffer).write_struct(value)
    data: bytes = buffer.getvalue()
    return data
