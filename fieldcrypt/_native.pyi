# Types of the C extension fieldcrypt._native (fieldcrypt/_native.c); used through fieldcrypt.format.kernel only.
from typing_extensions import Buffer

OPENSSL_VERSION: str
CELL_OVERHEAD: int
DIRECT_PATH_PROVEN: int

class KernelFailure(RuntimeError): ...

def encrypt(
    key: Buffer,
    prefix: Buffer,
    value_offsets: Buffer,
    value_data: Buffer,
    value_start: int,
    count: int,
    value_width: int,
    key_offsets: Buffer | None,
    key_data: Buffer | None,
    key_start: int,
    key_width: int,
    /,
) -> tuple[bytes, bytes]: ...
def decrypt(
    key: Buffer,
    prefix: Buffer,
    cell_offsets: Buffer,
    cell_data: Buffer,
    cell_start: int,
    count: int,
    cell_width: int,
    key_offsets: Buffer | None,
    key_data: Buffer | None,
    key_start: int,
    key_width: int,
    first_failure: Buffer | None = None,
    position: int = 0,
    /,
) -> tuple[bytes, bytearray, None] | tuple[None, None, tuple[int, int, int]]: ...
def wipe(buffer: Buffer, /) -> None: ...
def use_direct_path(on: bool, /) -> bool: ...
def inject_final_failure(on: bool, /) -> bool: ...
