"""The cell kernels: encrypt and decrypt whole Arrow arrays of cells (formats: fieldcrypt.format.cell).

Two implementations write and read the same bytes (docs/FORMAT.md sections 2-3):

- `python`, the reference: one `AESGCM` call per cell (fieldcrypt.format.cell), holding the GIL;
- `native`, the C extension fieldcrypt._native: OpenSSL 3 AES-256-GCM over the arrays'
  offsets and data buffers, one keyed cipher context per call, nonces from RAND_bytes in batches,
  the GIL released, so calls run side by side on a bounded thread pool. The context is the
  provider's implementation called through its dispatch table when the extension's import
  self-test proved it against EVP (DIRECT_PATH_PROVEN), else EVP (docs/FORMAT.md section 2).

Selection: FIELDCRYPT_KERNEL=python|native forces one; unset, native when the extension
imported, else python. A forced native kernel that is unavailable is a KernelError naming
why. FIELDCRYPT_THREADS bounds the threads running native calls (default: usable cores).

A column that fails to decrypt returns nothing and keeps nothing (docs/FORMAT.md section 2):
its slices share a FirstFailure, slices queued or running past the failing row stop, every
slice that did decrypt is wiped, and the error names the first failing row in column order.
OpenSSL failing inside the native kernel is a KernelError, never an IntegrityError.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from cryptography.exceptions import InvalidTag

from fieldcrypt.errors import FieldcryptError, InputError, IntegrityError, KernelError
from fieldcrypt.format.cell import (
    AUTHENTICATION_FAILED,
    CELL_OVERHEAD,
    NONCE_SIZE,
    DataKey,
    associated_data,
    cell_format_problem,
    encrypt_array,
    short_cell,
    unknown_version,
)

KERNEL_ENV = "FIELDCRYPT_KERNEL"
THREADS_ENV = "FIELDCRYPT_THREADS"
# One kernel call covers at most this many cells and bytes: bounds the transient objects of the
# Python kernel and keeps every output within Arrow binary's 2 GiB int32 offsets.
SLICE_CELLS = 1 << 16
SLICE_BYTES = 64 << 20
# Below this many cells a column is one call: handing it to another thread costs more than it saves.
PARALLEL_MIN_CELLS = 4096
_BINARY_TYPES = (pa.binary(), pa.string())
_LARGE_BINARY_TYPES = (pa.large_binary(), pa.large_string())


class CellFailure(Exception):
    """Cell `index` of one kernel call did not decrypt; `reason` says why (never its content)."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(index, reason)
        self.index = index
        self.reason = reason


class SliceStopped(Exception):
    """A call stopped before its cell `index`: an earlier row of its column had failed (FirstFailure)."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


class FirstFailure:
    """The lowest row of one column found failing so far, shared by the calls decrypting its slices.

    One aligned int64 (NONE until a cell fails): fieldcrypt._native reads it before each cell,
    stops at a row after it, and lowers it atomically when a cell fails; only the extension
    writes it. A slice before the failing row still runs, so the row named is the first in order.
    """

    NONE = int(np.iinfo(np.int64).max)

    def __init__(self) -> None:
        self.row = np.full(1, self.NONE, dtype=np.int64)

    def before(self, row: int) -> bool:
        """Whether a row before `row` failed (then nothing decrypted from `row` on can be returned)."""
        return int(self.row[0]) < row


class Kernel(Protocol):
    name: str
    releases_gil: bool

    def encrypt(self, key: DataKey, prefix: bytes, values: pa.Array, row_keys: pa.Array | None) -> pa.Array:
        """One call: non-null binary values -> binary array of version-1 cells."""
        ...

    def decrypt(
        self,
        key: DataKey,
        prefix: bytes,
        cells: pa.Array,
        row_keys: pa.Array | None,
        first_failure: FirstFailure | None = None,
        position: int = 0,
    ) -> pa.Array:
        """One call: non-null binary cells -> binary plaintexts; CellFailure at the first that fails,
        SliceStopped at a cell after `first_failure` (`position`: the column row of cell 0)."""
        ...

    def wipe(self, plaintexts: pa.Array) -> None:
        """Overwrite with zeros the plaintext bytes of an array this kernel's decrypt returned."""
        ...


class PythonKernel:
    """The reference kernel: fieldcrypt.format.cell, one AESGCM call per cell."""

    name = "python"
    releases_gil = False

    def encrypt(self, key: DataKey, prefix: bytes, values: pa.Array, row_keys: pa.Array | None) -> pa.Array:
        return encrypt_array(key.aead, prefix, _binary(values, "values"), _row_keys(row_keys, len(values)))

    def decrypt(
        self,
        key: DataKey,
        prefix: bytes,
        cells: pa.Array,
        row_keys: pa.Array | None,
        first_failure: FirstFailure | None = None,
        position: int = 0,
    ) -> pa.Array:
        # first_failure is not read: this kernel's slices run one after another and a failure ends the column.
        cells = _binary(cells, "cells")
        keys = _row_keys(row_keys, len(cells))
        key_values = None if keys is None else keys.to_pylist()
        decrypt = key.aead.decrypt
        out: list[bytes] = []
        for i, cell in enumerate(cells.to_pylist()):
            problem = cell_format_problem(cell)
            if problem is not None:
                raise CellFailure(i, problem)
            ad = prefix if key_values is None else associated_data(prefix, key_values[i])
            try:
                out.append(decrypt(cell[1 : 1 + NONCE_SIZE], cell[1 + NONCE_SIZE :], ad))
            except InvalidTag:
                raise CellFailure(i, AUTHENTICATION_FAILED) from None
        return pa.array(out, pa.binary())

    def wipe(self, plaintexts: pa.Array) -> None:
        # The Arrow copy only: the bytes objects AESGCM returned are immutable and beyond reach.
        data = plaintexts.buffers()[2]
        if data is not None and data.size:
            np.frombuffer(data, dtype=np.uint8)[:] = 0


class NativeKernel:
    """fieldcrypt._native over the arrays' buffers (GIL released inside)."""

    name = "native"
    releases_gil = True

    def __init__(self, module: ModuleType) -> None:
        self._module = module
        self.openssl_version: str = module.OPENSSL_VERSION

    def encrypt(self, key: DataKey, prefix: bytes, values: pa.Array, row_keys: pa.Array | None) -> pa.Array:
        values = _binary(values, "values")
        keys = _row_keys(row_keys, len(values))
        if len(values) == 0:
            return pa.array([], pa.binary())
        try:
            offsets, data = self._module.encrypt(key.key_bytes, prefix, *_buffers(values), *_key_buffers(keys))
        except self._module.KernelFailure as exc:
            raise KernelError(f"native kernel: {exc}") from None
        except OverflowError:  # a single value near 2 GiB: its cell cannot be stored in a binary column
            raise InputError("a value is too large to encrypt: its cell would exceed 2 GiB") from None
        return _from_buffers(len(values), offsets, data)

    def decrypt(
        self,
        key: DataKey,
        prefix: bytes,
        cells: pa.Array,
        row_keys: pa.Array | None,
        first_failure: FirstFailure | None = None,
        position: int = 0,
    ) -> pa.Array:
        cells = _binary(cells, "cells")
        keys = _row_keys(row_keys, len(cells))
        if len(cells) == 0:
            return pa.array([], pa.binary())
        mark = None if first_failure is None else first_failure.row
        try:
            offsets, data, failure = self._module.decrypt(
                key.key_bytes, prefix, *_buffers(cells), *_key_buffers(keys), mark, position
            )
        except self._module.KernelFailure as exc:  # OpenSSL failed: not the data, so not an IntegrityError
            raise KernelError(f"native kernel: {exc}") from None
        if failure is not None:
            index, reason, detail = failure
            if reason == _STOPPED:
                raise SliceStopped(index)
            raise CellFailure(index, _NATIVE_REASONS[reason](detail))
        return _from_buffers(len(cells), offsets, data)

    def wipe(self, plaintexts: pa.Array) -> None:
        data = plaintexts.buffers()[2]  # the bytearray decrypt returned, shared without a copy
        if data is not None:
            self._module.wipe(data)


_NATIVE_REASONS: dict[int, Callable[[int], str]] = {
    1: short_cell,
    2: unknown_version,
    3: lambda _detail: AUTHENTICATION_FAILED,
}
_STOPPED = 4


def _import_native() -> tuple[NativeKernel | None, str]:
    try:
        module = importlib.import_module("fieldcrypt._native")
    except ImportError as exc:  # not built (no compiler or OpenSSL headers at install), or libcrypto missing
        return None, f"the extension fieldcrypt._native did not import ({exc})"
    return NativeKernel(module), ""


PYTHON = PythonKernel()
NATIVE, NATIVE_MISSING = _import_native()


def selected_kernel() -> Kernel:
    """The kernel FIELDCRYPT_KERNEL asks for (read on every call, so a process can switch)."""
    wanted = os.environ.get(KERNEL_ENV, "").strip().lower()
    if wanted == "python":
        return PYTHON
    if wanted == "native":
        if NATIVE is None:
            raise KernelError(f"{KERNEL_ENV}=native but the native kernel is unavailable: {NATIVE_MISSING}")
        return NATIVE
    if wanted:
        raise KernelError(f"{KERNEL_ENV} must be 'python' or 'native', got {wanted!r}")
    return NATIVE if NATIVE is not None else PYTHON


def active_kernel() -> str:
    """'native' or 'python': the kernel protect, verify and reveal use in this process now."""
    return selected_kernel().name


def describe() -> str:
    """One line for `fieldcrypt --version`: the active kernel and why (never raises)."""
    try:
        kernel = selected_kernel()
        if isinstance(kernel, NativeKernel):
            return f"cell kernel: native ({kernel.openssl_version}, {threads()} threads)"
    except FieldcryptError as exc:
        return f"cell kernel: unusable ({exc})"
    why = f"forced by {KERNEL_ENV}" if os.environ.get(KERNEL_ENV) else f"native unavailable: {NATIVE_MISSING}"
    return f"cell kernel: python ({why})"


def threads() -> int:
    """Threads that run native kernel calls side by side: FIELDCRYPT_THREADS, else the usable cores."""
    setting = os.environ.get(THREADS_ENV, "").strip()
    if not setting:
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if not (setting.isascii() and setting.isdigit()) or not 1 <= int(setting) <= 256:
        raise InputError(f"{THREADS_ENV} must be a whole number from 1 to 256, got {setting!r}")
    return int(setting)


def encrypt_column(key: DataKey, prefix: bytes, values: pa.Array, row_keys: pa.Array | None) -> pa.Array:
    """Encrypt non-null values (binary or string, one row key each or None) into a binary array of cells.

    The column is cut into slices (at most SLICE_CELLS cells and SLICE_BYTES bytes each);
    with the native kernel, into at least one slice per thread, run on the shared pool.
    """
    kernel = selected_kernel()
    sizes = pc.binary_length(values).to_numpy(zero_copy_only=False).astype(np.int64) + CELL_OVERHEAD

    def call(start: int, size: int) -> pa.Array:
        return kernel.encrypt(key, prefix, values.slice(start, size), _slice(row_keys, start, size))

    outcomes = _run(kernel, call, _slices(sizes, _parts(kernel, len(values))))
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return _joined(outcomes)


def decrypt_column(
    key: DataKey, prefix: bytes, cells: pa.Array, row_keys: pa.Array | None, name_cell: Callable[[int], str]
) -> pa.Array:
    """Authenticate and decrypt non-null cells into a binary array of plaintexts.

    The first cell (in order) that fails is an IntegrityError that starts with
    `name_cell(i)` (e.g. "<file> row 17"; never a value) and says why; nothing decrypted
    is returned then: slices after that row stop, and the plaintext of every slice that
    did decrypt is wiped before the error is raised. OpenSSL failing is a KernelError.
    """
    kernel = selected_kernel()
    sizes = pc.binary_length(cells).to_numpy(zero_copy_only=False).astype(np.int64)
    first_failure = FirstFailure()

    def call(start: int, size: int) -> pa.Array:
        if first_failure.before(start):  # queued behind a failure: whatever it decrypted would be wiped
            raise SliceStopped(0)
        part = cells.slice(start, size)
        return kernel.decrypt(key, prefix, part, _slice(row_keys, start, size), first_failure, start)

    slices = _slices(sizes, _parts(kernel, len(cells)))
    outcomes = _run(kernel, call, slices)
    if not any(isinstance(outcome, BaseException) for outcome in outcomes):
        return _joined(outcomes)
    for outcome in outcomes:
        if isinstance(outcome, pa.Array):
            kernel.wipe(outcome)
    raise _column_error(slices or [(0, 0)], outcomes, name_cell)


def _column_error(
    slices: list[tuple[int, int]], outcomes: list[pa.Array | BaseException], name_cell: Callable[[int], str]
) -> BaseException:
    """What a failed column raises: an error that is not a cell's (OpenSSL, bad input) as it is,
    else the IntegrityError of the lowest failing row."""
    failed_rows: list[tuple[int, str]] = []
    for (start, _), outcome in zip(slices, outcomes, strict=False):
        if isinstance(outcome, CellFailure):
            failed_rows.append((start + outcome.index, outcome.reason))
        elif isinstance(outcome, BaseException) and not isinstance(outcome, SliceStopped):
            return outcome
    if not failed_rows:  # a slice stops only behind a failing row
        return KernelError("native kernel: slices stopped although no row failed")
    row, reason = min(failed_rows, key=lambda failed: failed[0])
    return IntegrityError(f"{name_cell(row)}: {reason}")


def _run(
    kernel: Kernel, call: Callable[[int, int], pa.Array], slices: list[tuple[int, int]]
) -> list[pa.Array | BaseException]:
    """`call(start, count)` for each slice: in slice order, the array it returned or the exception
    it raised. On the shared pool when the kernel releases the GIL, and then every call has
    finished on return (none is left running with plaintext nobody would wipe); otherwise one
    after another, ending at the first exception. An empty array is one (empty) call."""
    slices = slices or [(0, 0)]
    outcomes: list[pa.Array | BaseException] = []
    if len(slices) == 1 or not kernel.releases_gil:
        for start, size in slices:
            try:
                outcomes.append(call(start, size))
            except Exception as exc:  # noqa: BLE001 - handed to the caller, which raises it or its own
                outcomes.append(exc)
                break
        return outcomes
    pool = _pool(threads())
    futures = [pool.submit(call, start, size) for start, size in slices]
    for future in futures:
        error = future.exception()  # waits for the call
        outcomes.append(future.result() if error is None else error)
    return outcomes


def _joined(outcomes: list[pa.Array | BaseException]) -> pa.Array:
    parts = [outcome for outcome in outcomes if isinstance(outcome, pa.Array)]
    return parts[0] if len(parts) == 1 else pa.concat_arrays(parts)


def _slice(row_keys: pa.Array | None, start: int, size: int) -> pa.Array | None:
    return None if row_keys is None else row_keys.slice(start, size)


def _parts(kernel: Kernel, cells: int) -> int:
    return threads() if kernel.releases_gil and cells >= PARALLEL_MIN_CELLS else 1


def _slices(sizes: np.ndarray, parts: int) -> list[tuple[int, int]]:
    """(start, count) slices covering `sizes`: about `parts` of them, each within SLICE_CELLS and SLICE_BYTES."""
    count = len(sizes)
    per_slice = min(SLICE_CELLS, max(1, -(-count // parts)))
    ends = np.cumsum(sizes, dtype=np.int64)
    slices: list[tuple[int, int]] = []
    start = 0
    while start < count:
        base = int(ends[start - 1]) if start else 0
        within_bytes = int(np.searchsorted(ends, base + SLICE_BYTES, side="right"))
        end = min(start + per_slice, count, max(within_bytes, start + 1))
        slices.append((start, end - start))
        start = end
    return slices


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _forget_pools_after_fork() -> None:
    """A forked child has none of the parent's threads: it starts its own pools on first use."""
    global _POOLS_LOCK
    _POOLS.clear()
    _POOLS_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_pools_after_fork)


def _pool(workers: int) -> ThreadPoolExecutor:
    """The process-wide pool of native kernel threads (one per thread count asked for)."""
    with _POOLS_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            pool = _POOLS[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fieldcrypt-kernel")
        return pool


def _binary(array: pa.Array, what: str) -> pa.Array:
    """A non-null binary or large_binary view of a string or binary array (no copy)."""
    if array.null_count:
        raise ValueError(f"{what}: only non-null {what} go through the cell kernel")
    if array.type in _BINARY_TYPES:
        return array.cast(pa.binary())
    if array.type in _LARGE_BINARY_TYPES:
        return array.cast(pa.large_binary())
    raise ValueError(f"{what}: expected a binary or string array, got {array.type}")


def _row_keys(row_keys: pa.Array | None, count: int) -> pa.Array | None:
    if row_keys is None:
        return None
    if len(row_keys) != count:
        raise ValueError("row keys must be non-null, one per value")
    return _binary(row_keys, "row keys")


def _buffers(array: pa.Array) -> tuple[pa.Buffer, pa.Buffer | bytes, int, int, int]:
    """(offsets, data, offset, length, offset width) of a binary or large_binary array for the extension."""
    buffers = array.buffers()
    data = buffers[2] if buffers[2] is not None else b""
    return buffers[1], data, array.offset, len(array), 8 if array.type == pa.large_binary() else 4


def _key_buffers(row_keys: pa.Array | None) -> tuple[pa.Buffer | None, pa.Buffer | bytes | None, int, int]:
    if row_keys is None:
        return None, None, 0, 4
    offsets, data, offset, _, width = _buffers(row_keys)
    return offsets, data, offset, width


def _from_buffers(count: int, offsets: bytes, data: bytes) -> pa.Array:
    return pa.Array.from_buffers(pa.binary(), count, [None, pa.py_buffer(offsets), pa.py_buffer(data)])
