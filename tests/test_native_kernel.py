"""The native cell kernel (fieldcrypt._native via fieldcrypt.format.kernel) against the pure-Python reference.

Differential: cells written by one kernel are read by the other, for random values (empty,
NUL bytes, multi-byte UTF-8, 1 MB), random row keys or none, arrays sliced at an offset;
tampering fails at the same cell with the same reason in both. Then the extension's own
bounds checks, kernel selection and the fallback when the extension is missing.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from demo.sample_data import land_sample_lake, snapshot_path
from fieldcrypt import InputError, IntegrityError, Workspace
from fieldcrypt.cli import run
from fieldcrypt.errors import KernelError
from fieldcrypt.format import kernel as kernels
from fieldcrypt.format.cell import AUTHENTICATION_FAILED, CELL_OVERHEAD, DataKey, ad_prefix
from fieldcrypt.format.kernel import CellFailure, FirstFailure, Kernel, SliceStopped, decrypt_column, encrypt_column
from fieldcrypt.reads.reveal import decrypt_rows

REPO = Path(__file__).resolve().parent.parent
KEY = DataKey(bytes(range(32)))
PREFIX_KEYED = ad_prefix("users", "email", has_row_key=True)
PREFIX_UNKEYED = ad_prefix("users", "email", has_row_key=False)
MEGABYTE = "é" * (1 << 19)  # 1 MiB of two-byte UTF-8

if kernels.NATIVE is None:  # the extension is built on every supported machine: its absence is a failure here
    pytest.fail(f"native kernel unavailable: {kernels.NATIVE_MISSING}", pytrace=False)
NATIVE: Kernel = kernels.NATIVE
PYTHON: Kernel = kernels.PYTHON
DIRECTIONS = [pytest.param(NATIVE, PYTHON, id="native-to-python"), pytest.param(PYTHON, NATIVE, id="python-to-native")]

texts = st.one_of(
    st.just(""),
    st.text(max_size=60),
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=400),
    st.sampled_from(["\x00", "a\x00b", "😀" * 30, "日本語テキスト", "\x00" * 40]),
)


@st.composite
def columns(draw: st.DrawFn, big: bool = False) -> tuple[pa.Array, pa.Array | None]:
    """(values, row keys or None): a slice at a random offset of a larger string array."""
    values = draw(st.lists(texts, min_size=0, max_size=40))
    if big:
        values.insert(draw(st.integers(0, len(values))), MEGABYTE)
    head, tail = draw(st.integers(0, 5)), draw(st.integers(0, 5))
    padded = ["pad"] * head + values + ["pad"] * tail
    value_type = draw(st.sampled_from([pa.string(), pa.large_string(), pa.binary()]))
    array = pa.array([v.encode() if value_type == pa.binary() else v for v in padded], value_type)
    if draw(st.booleans()):
        return array.slice(head, len(values)), None
    keys = draw(st.lists(st.binary(max_size=50), min_size=len(values), max_size=len(values)))
    key_array = pa.array([b"k"] * head + keys + [b"k"] * tail, pa.binary())
    return array.slice(head, len(values)), key_array.slice(head, len(values))


def prefix_for(row_keys: pa.Array | None) -> bytes:
    return PREFIX_UNKEYED if row_keys is None else PREFIX_KEYED


def plain_bytes(values: pa.Array) -> list[bytes]:
    return [v if isinstance(v, bytes) else v.encode() for v in values.to_pylist()]


@pytest.mark.parametrize(("writer", "reader"), DIRECTIONS)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(column=columns())
def test_cells_written_by_one_kernel_are_read_by_the_other(
    writer: Kernel, reader: Kernel, column: tuple[pa.Array, pa.Array | None]
) -> None:
    values, row_keys = column
    cells = writer.encrypt(KEY, prefix_for(row_keys), values, row_keys)
    assert cells.type == pa.binary()
    assert [len(c) for c in cells.to_pylist()] == [len(v) + CELL_OVERHEAD for v in plain_bytes(values)]
    assert all(c[0] == 1 for c in cells.to_pylist())
    assert reader.decrypt(KEY, prefix_for(row_keys), cells, row_keys).to_pylist() == plain_bytes(values)


@pytest.mark.parametrize(("writer", "reader"), DIRECTIONS)
@settings(max_examples=4, deadline=None)
@given(column=columns(big=True))
def test_one_megabyte_values_cross_between_kernels(
    writer: Kernel, reader: Kernel, column: tuple[pa.Array, pa.Array | None]
) -> None:
    values, row_keys = column
    cells = writer.encrypt(KEY, prefix_for(row_keys), values, row_keys)
    assert reader.decrypt(KEY, prefix_for(row_keys), cells, row_keys).to_pylist() == plain_bytes(values)


def tampered(cells: pa.Array, index: int, change: Callable[[bytes], bytes]) -> pa.Array:
    stored = cells.to_pylist()
    stored[index] = change(stored[index])
    return pa.array(stored, pa.binary())


def failure(kernel: Kernel, cells: pa.Array, row_keys: pa.Array | None) -> tuple[int, str]:
    with pytest.raises(CellFailure) as caught:
        kernel.decrypt(KEY, prefix_for(row_keys), cells, row_keys)
    return caught.value.index, caught.value.reason


@pytest.mark.parametrize(("writer", "reader"), DIRECTIONS)
@settings(max_examples=60, deadline=None)
@given(column=columns(), data=st.data())
def test_a_flipped_bit_fails_at_its_cell_in_both_kernels(
    writer: Kernel, reader: Kernel, column: tuple[pa.Array, pa.Array | None], data: st.DataObject
) -> None:
    values, row_keys = column
    if len(values) == 0:
        return
    cells = writer.encrypt(KEY, prefix_for(row_keys), values, row_keys)
    index = data.draw(st.integers(0, len(values) - 1))
    length = len(cells[index].as_py())
    byte, bit = data.draw(st.integers(0, length - 1)), data.draw(st.integers(0, 7))
    broken = tampered(cells, index, lambda c: c[:byte] + bytes([c[byte] ^ (1 << bit)]) + c[byte + 1 :])
    expected = "unknown cell format version" if byte == 0 else "failed authentication"
    for kernel in (reader, writer):
        at, reason = failure(kernel, broken, row_keys)
        assert at == index
        assert expected in reason


@pytest.mark.parametrize("kernel", [NATIVE, PYTHON], ids=["native", "python"])
def test_a_truncated_cell_is_named_with_its_length(kernel: Kernel) -> None:
    values = pa.array(["a@example.com", "b@example.com", "c@example.com"])
    cells = kernel.encrypt(KEY, PREFIX_UNKEYED, values, None)
    assert failure(kernel, tampered(cells, 2, lambda c: c[:20]), None) == (
        2,
        "ciphertext is 20 bytes, shorter than the 29-byte minimum",
    )
    assert failure(kernel, tampered(cells, 1, lambda c: c[:-1]), None)[0] == 1


@pytest.mark.parametrize("kernel", [NATIVE, PYTHON], ids=["native", "python"])
def test_a_cell_under_another_row_key_fails_at_that_row(kernel: Kernel) -> None:
    values = pa.array(["a", "b", "c", "d"])
    keys = pa.array([b"1", b"2", b"3", b"4"])
    cells = kernel.encrypt(KEY, PREFIX_KEYED, values, keys)
    moved = pa.array([b"1", b"2", b"4", b"3"])
    assert failure(kernel, cells, moved)[0] == 2
    assert failure(kernel, cells, None)[0] == 0  # keyed cells read as unkeyed: the AD differs
    with pytest.raises(CellFailure):
        kernel.decrypt(DataKey(bytes(32)), PREFIX_KEYED, cells, keys)


@pytest.mark.parametrize("kernel", [NATIVE, PYTHON], ids=["native", "python"])
def test_null_values_are_refused_not_skipped(kernel: Kernel) -> None:
    with pytest.raises(ValueError, match="non-null"):
        kernel.encrypt(KEY, PREFIX_UNKEYED, pa.array(["a", None]), None)
    with pytest.raises(ValueError, match="non-null"):
        kernel.decrypt(KEY, PREFIX_UNKEYED, pa.array([None], pa.binary()), None)


@pytest.mark.parametrize("kernel", [NATIVE, PYTHON], ids=["native", "python"])
def test_a_slice_without_nulls_of_an_array_with_nulls_encrypts(kernel: Kernel) -> None:
    values = pa.array([None, "x", "yy", None]).slice(1, 2)
    keys = pa.array([None, b"7", b"8"], pa.binary()).slice(1, 2)
    cells = kernel.encrypt(KEY, PREFIX_KEYED, values, keys)
    assert PYTHON.decrypt(KEY, PREFIX_KEYED, cells, keys).to_pylist() == [b"x", b"yy"]


def test_nonces_differ_for_equal_values() -> None:
    cells = NATIVE.encrypt(KEY, PREFIX_UNKEYED, pa.array(["same"] * 3000), None).to_pylist()
    assert len({cell[1:13] for cell in cells}) == 3000


# -- column API: slices, threads, row numbers in errors -------------------------------------


@pytest.mark.parametrize("kernel_name", ["native", "python"])
def test_a_column_cut_into_many_slices_round_trips(monkeypatch: pytest.MonkeyPatch, kernel_name: str) -> None:
    monkeypatch.setenv("FIELDCRYPT_KERNEL", kernel_name)
    monkeypatch.setenv("FIELDCRYPT_THREADS", "3")
    monkeypatch.setattr(kernels, "SLICE_CELLS", 700)
    monkeypatch.setattr(kernels, "SLICE_BYTES", 5000)
    monkeypatch.setattr(kernels, "PARALLEL_MIN_CELLS", 10)
    values = pa.array([f"user{i}@example.com" * (i % 7) for i in range(5000)])
    keys = pa.array([str(i).encode() for i in range(5000)])
    cells = encrypt_column(KEY, PREFIX_KEYED, values, keys)
    assert len(cells) == 5000
    assert decrypt_column(KEY, PREFIX_KEYED, cells, keys, str).equals(values.cast(pa.binary()))


def test_a_failure_in_a_later_slice_names_its_row(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIELDCRYPT_THREADS", "2")
    monkeypatch.setattr(kernels, "PARALLEL_MIN_CELLS", 10)
    monkeypatch.setattr(kernels, "SLICE_CELLS", 100)
    values = pa.array([f"v{i}" for i in range(1000)])
    cells = encrypt_column(KEY, PREFIX_UNKEYED, values, None)
    broken = tampered(tampered(cells, 777, lambda c: c[:-1] + b"!"), 901, lambda c: c[:5])
    with pytest.raises(IntegrityError, match=r"^part-0\.parquet row 10777: ciphertext failed authentication"):
        decrypt_column(KEY, PREFIX_UNKEYED, broken, None, lambda i: f"part-0.parquet row {10_000 + i}")


def recorded_calls(monkeypatch: pytest.MonkeyPatch, kernel: Kernel) -> tuple[list[int], list[pa.Array]]:
    """(column row of every decrypt call, the plaintexts each successful call returned): a recorder
    around the real kernel (it keeps references, changes nothing) so a test can see those arrays."""
    positions: list[int] = []
    returned: list[pa.Array] = []
    real = kernel.decrypt

    def decrypt(
        key: DataKey,
        prefix: bytes,
        cells: pa.Array,
        row_keys: pa.Array | None,
        first_failure: FirstFailure | None = None,
        position: int = 0,
    ) -> pa.Array:
        positions.append(position)
        plaintexts = real(key, prefix, cells, row_keys, first_failure, position)
        returned.append(plaintexts)
        return plaintexts

    monkeypatch.setattr(kernel, "decrypt", decrypt)
    return positions, returned


def failing_column(monkeypatch: pytest.MonkeyPatch, kernel_name: str) -> pa.Array:
    """1,000 cells in ten slices of 100 run one at a time, row 350 tampered."""
    monkeypatch.setenv("FIELDCRYPT_KERNEL", kernel_name)
    monkeypatch.setenv("FIELDCRYPT_THREADS", "1")  # one worker: slices run in order, the queue is known
    monkeypatch.setattr(kernels, "PARALLEL_MIN_CELLS", 10)
    monkeypatch.setattr(kernels, "SLICE_CELLS", 100)
    cells = encrypt_column(KEY, PREFIX_UNKEYED, pa.array([f"user{i}@example.com" for i in range(1000)]), None)
    return tampered(cells, 350, lambda c: c[:-1] + bytes([c[-1] ^ 1]))


@pytest.mark.parametrize("kernel_name", ["native", "python"])
def test_a_failed_column_wipes_the_plaintext_of_the_slices_that_decrypted(
    monkeypatch: pytest.MonkeyPatch, kernel_name: str
) -> None:
    broken = failing_column(monkeypatch, kernel_name)
    _, returned = recorded_calls(monkeypatch, NATIVE if kernel_name == "native" else PYTHON)
    with pytest.raises(IntegrityError, match=r"^row 350: ciphertext failed authentication"):
        decrypt_column(KEY, PREFIX_UNKEYED, broken, None, lambda i: f"row {i}")
    assert len(returned) == 3  # the slices of rows 0-299
    for plaintexts in returned:
        data = plaintexts.buffers()[2]
        assert data.size > 0
        assert data.to_pybytes() == bytes(data.size)


@pytest.mark.parametrize("kernel_name", ["native", "python"])
def test_a_failed_column_does_not_decrypt_the_slices_queued_after_the_failure(
    monkeypatch: pytest.MonkeyPatch, kernel_name: str
) -> None:
    broken = failing_column(monkeypatch, kernel_name)
    positions, _ = recorded_calls(monkeypatch, NATIVE if kernel_name == "native" else PYTHON)
    with pytest.raises(IntegrityError, match=r"^row 350: "):
        decrypt_column(KEY, PREFIX_UNKEYED, broken, None, lambda i: f"row {i}")
    assert positions == [0, 100, 200, 300]


def test_a_native_call_stops_at_the_rows_after_a_failure_another_slice_found() -> None:
    cells = NATIVE.encrypt(KEY, PREFIX_UNKEYED, pa.array([f"v{i}" for i in range(10)]), None)
    first_failure = FirstFailure()
    first_failure.row[0] = 103  # another slice of the column failed at row 103
    with pytest.raises(SliceStopped) as stopped:
        NATIVE.decrypt(KEY, PREFIX_UNKEYED, cells, None, first_failure, 100)
    assert stopped.value.index == 4  # rows 100-103 were read, row 104 was not


def test_a_failing_native_call_lowers_the_columns_first_failure_to_its_row() -> None:
    cells = NATIVE.encrypt(KEY, PREFIX_UNKEYED, pa.array([f"v{i}" for i in range(10)]), None)
    broken = tampered(cells, 7, lambda c: c[:-1] + bytes([c[-1] ^ 1]))
    first_failure = FirstFailure()
    for position, expected in [(1000, 1007), (500, 507)]:  # a call at a later row would stop (test above)
        with pytest.raises(CellFailure):
            NATIVE.decrypt(KEY, PREFIX_UNKEYED, broken, None, first_failure, position)
        assert int(first_failure.row[0]) == expected


def test_threads_setting_must_be_a_positive_number(monkeypatch: pytest.MonkeyPatch) -> None:
    for bad in ("0", "-1", "two", "1.5", "²", "257"):
        monkeypatch.setenv("FIELDCRYPT_THREADS", bad)
        with pytest.raises(InputError, match="FIELDCRYPT_THREADS"):
            kernels.threads()
    monkeypatch.setenv("FIELDCRYPT_THREADS", "5")
    assert kernels.threads() == 5


# -- the extension's own checks on what it is handed -------------------------------------


def native_call(function: str, *args: Any) -> Any:
    module = sys.modules["fieldcrypt._native"]
    return getattr(module, function)(*args)


@pytest.mark.parametrize("function", ["encrypt", "decrypt"])
def test_the_extension_checks_every_offset_before_reading(function: str) -> None:
    good = (bytes(32), b"prefix")
    offsets = pa.array([0, 4, 8], pa.int32()).buffers()[1]
    cases = {
        "offsets out of order": (pa.array([0, 9, 4], pa.int32()).buffers()[1], b"x" * 9, 0, 2, 4),
        "past the data buffer": (pa.array([0, 4, 99], pa.int32()).buffers()[1], b"x" * 8, 0, 2, 4),
        "negative first offset": (pa.array([-4, 4, 8], pa.int32()).buffers()[1], b"x" * 8, 0, 2, 4),
        "offsets buffer too short": (offsets, b"x" * 8, 1, 2, 4),
        "count past the buffer": (offsets, b"x" * 8, 0, 3, 4),
        "bad width": (offsets, b"x" * 8, 0, 2, 2),
        "negative start": (offsets, b"x" * 8, -1, 2, 4),
    }
    for name, view in cases.items():
        with pytest.raises(ValueError):
            native_call(function, *good, *view, None, None, 0, 4)
            pytest.fail(name)
    with pytest.raises(ValueError, match="row keys"):
        native_call(function, *good, offsets, b"x" * 8, 0, 2, 4, pa.array([0, 1], pa.int32()).buffers()[1], b"k", 0, 4)
    with pytest.raises(ValueError, match="32 bytes"):
        native_call(function, bytes(16), b"prefix", offsets, b"x" * 8, 0, 2, 4, None, None, 0, 4)


class OffsetFlipper:
    """Another thread writing one offset of a writable buffer back and forth while the kernel runs
    (it gets the GIL whenever the kernel releases it): value `a`, then `b`, then `a`..."""

    def __init__(self, offsets: bytearray, index: int, a: int, b: int) -> None:
        self.view = memoryview(offsets).cast("i")
        self.index, self.values = index, (b, a)
        self.running = True
        self.thread = threading.Thread(target=self.flip, daemon=True)

    def flip(self) -> None:
        for value in itertools.cycle(self.values):  # one write per loop turn: the GIL may pass with either value
            self.view[self.index] = value
            if not self.running:
                break

    def __enter__(self) -> OffsetFlipper:
        # The kernel waits for the GIL back from the flipping thread: let that take 0.1 ms, not 5.
        self.switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-4)
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.running = False
        self.thread.join()
        sys.setswitchinterval(self.switch_interval)
        self.view.release()


RACE_CELLS = 20_000
RACE_CALLS = 100


def test_offsets_changed_during_a_decrypt_give_the_right_plaintexts_or_a_named_failure() -> None:
    values = [f"user{i}@example.com".encode() for i in range(RACE_CELLS)]
    cells = PYTHON.encrypt(KEY, PREFIX_UNKEYED, pa.array(values, pa.binary()), None)
    offsets = bytearray(cells.buffers()[1].to_pybytes())
    data = cells.buffers()[2].to_pybytes()
    k = RACE_CELLS // 2
    right = pa.array(values, pa.binary())
    expected_offsets, expected_data = right.buffers()[1].to_pybytes(), right.buffers()[2].to_pybytes()
    a = memoryview(offsets).cast("i")[k]
    b = memoryview(offsets).cast("i")[k - 1] + 1  # cell k-1 becomes 1 byte long: too short to be a cell
    with OffsetFlipper(offsets, k, a, b):
        for _ in range(RACE_CALLS):
            out_offsets, out_data, failed = native_call(
                "decrypt", KEY.key_bytes, PREFIX_UNKEYED, offsets, data, 0, RACE_CELLS, 4, None, None, 0, 4
            )
            if failed is not None:
                assert failed == (k - 1, 1, 1)  # short cell of 1 byte
            else:
                assert out_offsets == expected_offsets
                assert bytes(out_data) == expected_data  # every byte, and no byte past the last value


def test_offsets_changed_during_an_encrypt_give_the_cells_of_one_of_the_two_columns() -> None:
    values = [f"user{i}@example.com".encode() for i in range(RACE_CELLS)]
    column = pa.array(values, pa.binary())
    offsets = bytearray(column.buffers()[1].to_pybytes())
    data = column.buffers()[2].to_pybytes()
    k = RACE_CELLS // 2
    a = memoryview(offsets).cast("i")[k]
    shifted = [*values[: k - 1], values[k - 1][:-1], values[k - 1][-1:] + values[k], *values[k + 1 :]]
    value_lengths, shifted_lengths = [len(v) for v in values], [len(v) for v in shifted]
    with OffsetFlipper(offsets, k, a, a - 1):  # the last byte of value k-1 moves to value k
        for _ in range(RACE_CALLS):
            out_offsets, out_data = native_call(
                "encrypt", KEY.key_bytes, PREFIX_UNKEYED, offsets, data, 0, RACE_CELLS, 4, None, None, 0, 4
            )
            assert int.from_bytes(out_offsets[-4:], "little") == len(out_data)  # no byte past the last cell
            _, plain, failed = native_call(
                "decrypt", KEY.key_bytes, PREFIX_UNKEYED, out_offsets, out_data, 0, RACE_CELLS, 4, None, None, 0, 4
            )
            assert failed is None
            lengths = (np.diff(np.frombuffer(out_offsets, np.int32)) - CELL_OVERHEAD).tolist()
            assert (lengths, bytes(plain)) in ((value_lengths, b"".join(values)), (shifted_lengths, b"".join(shifted)))


# -- OpenSSL failing is not the data failing --------------------------------------------------


@pytest.fixture
def final_step_failing(nonce_path: str) -> Any:
    """Fault injection (fieldcrypt._native.inject_final_failure): OpenSSL's final step reports failure
    for every decrypted cell, as a failing OpenSSL would; a real libcrypto does not fail on demand."""
    module = NATIVE._module  # type: ignore[attr-defined]
    previous = module.inject_final_failure(True)
    yield nonce_path
    module.inject_final_failure(previous)


def test_a_failing_final_step_on_a_cell_with_the_right_tag_is_a_kernel_error_not_an_integrity_error(
    final_step_failing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIELDCRYPT_KERNEL", "native")
    keys = pa.array([b"1", b"2", b"3"])
    cells = PYTHON.encrypt(KEY, PREFIX_KEYED, pa.array(["c" * 5000, "a@example.com", "b@example.com"]), keys)
    with pytest.raises(KernelError, match="tag is right: an internal OpenSSL failure, not the data") as caught:
        decrypt_column(KEY, PREFIX_KEYED, cells, keys, lambda i: f"row {i}")
    assert not isinstance(caught.value, IntegrityError)


def test_a_wrong_tag_is_an_authentication_failure_even_when_the_final_step_fails(final_step_failing: str) -> None:
    keys = pa.array([b"1", b"2"])
    cells = PYTHON.encrypt(KEY, PREFIX_KEYED, pa.array(["b" * 5000, "a@example.com"]), keys)
    assert failure(NATIVE, tampered(cells, 0, lambda c: c[:-1] + bytes([c[-1] ^ 1])), keys) == (
        0,
        AUTHENTICATION_FAILED,
    )


# -- the key holder --------------------------------------------------------------------------


def test_a_data_key_hides_its_bytes_and_refuses_to_be_pickled() -> None:
    key = DataKey(os.urandom(32))
    assert key.key_bytes.hex() not in repr(key) and repr(key.key_bytes) not in repr(key)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(key)
    with pytest.raises(Exception, match="32 bytes"):
        DataKey(bytes(31))


# -- selection and fallback ------------------------------------------------------------------


def test_kernel_is_native_by_default_and_python_when_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FIELDCRYPT_KERNEL", raising=False)
    assert kernels.active_kernel() == "native"
    monkeypatch.setenv("FIELDCRYPT_KERNEL", "python")
    assert kernels.active_kernel() == "python"
    monkeypatch.setenv("FIELDCRYPT_KERNEL", "rust")
    with pytest.raises(KernelError, match="must be 'python' or 'native', got 'rust'"):
        kernels.active_kernel()


def test_forced_native_kernel_that_is_missing_is_an_error_naming_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "NATIVE", None)
    monkeypatch.setattr(kernels, "NATIVE_MISSING", "the extension fieldcrypt._native did not import (test)")
    monkeypatch.setenv("FIELDCRYPT_KERNEL", "native")
    with pytest.raises(KernelError, match=r"FIELDCRYPT_KERNEL=native but .*fieldcrypt\._native did not import"):
        encrypt_column(KEY, PREFIX_UNKEYED, pa.array(["a"]), None)
    monkeypatch.delenv("FIELDCRYPT_KERNEL")
    assert kernels.active_kernel() == "python"


MISSING_EXTENSION = """
import os, sys
sys.modules["fieldcrypt._native"] = None  # as if the extension had not been built
from fieldcrypt.format import kernel
print(kernel.active_kernel())
os.environ["FIELDCRYPT_KERNEL"] = "native"
try:
    kernel.active_kernel()
except kernel.KernelError as exc:
    print("refused:", exc)
"""


def test_without_the_extension_the_python_kernel_is_used_and_forcing_native_is_refused() -> None:
    result = subprocess.run(
        [sys.executable, "-c", MISSING_EXTENSION],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "FIELDCRYPT_KERNEL"},
    )
    lines = result.stdout.splitlines()
    assert lines[0] == "python"
    assert lines[1].startswith("refused: FIELDCRYPT_KERNEL=native but the native kernel is unavailable")
    assert "fieldcrypt._native" in lines[1]


def test_version_names_the_package_and_the_active_kernel(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("FIELDCRYPT_KERNEL", raising=False)
    with pytest.raises(SystemExit) as exited:
        run(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("fieldcrypt 0.1.0, cell kernel: native (OpenSSL 3")
    monkeypatch.setenv("FIELDCRYPT_KERNEL", "python")
    with pytest.raises(SystemExit):
        run(["--version"])
    assert "cell kernel: python (forced by FIELDCRYPT_KERNEL)" in capsys.readouterr().out


# -- whole files: protect with one kernel, reveal and tamper-check with the other -----------


@pytest.mark.parametrize(("protect_with", "reveal_with"), [("native", "python"), ("python", "native")])
def test_a_file_protected_by_one_kernel_is_revealed_by_the_other(
    make_local_workspace: Callable[..., Workspace],
    enable_at: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    protect_with: str,
    reveal_with: str,
) -> None:
    workspace = make_local_workspace()
    land_sample_lake(workspace.store, date(2026, 11, 1), 1, users=300, events=10)
    enable_at(workspace, "users.email", "email")
    original = workspace.store.full_path(snapshot_path("users", "2026-11-01"))
    before = pq.read_table(original)
    monkeypatch.setenv("FIELDCRYPT_KERNEL", protect_with)
    assert workspace.protect("users", "2026-11-01").newly_encrypted > 0
    monkeypatch.setenv("FIELDCRYPT_KERNEL", reveal_with)
    revealed = pa.Table.from_batches(list(workspace.reveal("users", "2026-11-01", ["email"])))
    assert revealed.column("users.email").equals(before.column("email"))


@pytest.mark.parametrize("kernel_name", ["native", "python"])
def test_rows_under_several_data_keys_decrypt_in_row_order_and_a_bad_cell_names_its_row(
    local_workspace: Workspace, enable_at: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, kernel_name: str
) -> None:
    monkeypatch.setenv("FIELDCRYPT_KERNEL", kernel_name)
    entry = enable_at(local_workspace, "users.email", "email")
    rel = snapshot_path("users", "2026-11-01")
    original = pq.read_table(local_workspace.store.full_path(rel)).column("email")
    local_workspace.key_cache().max_cells_per_key = 37  # several data keys in one row group
    local_workspace.protect("users", "2026-11-01")
    batch = pq.read_table(local_workspace.store.full_path(rel)).combine_chunks().to_batches()[0]
    assert len(set(batch.column("email__fc_dek").to_pylist()) - {None}) > 3
    protected = pc.indices_nonzero(pc.is_valid(batch.column("email__fc_ct")))
    rows = pa.array(list(reversed(protected.to_pylist())), pa.int64())  # out of order on purpose
    spec = local_workspace.policy().datasets["users"]
    cache = local_workspace.key_cache()
    decrypted = decrypt_rows(batch, spec, entry, cache, rows, rel)
    assert decrypted.equals(original.combine_chunks().take(rows))
    victim = protected[len(protected) // 2].as_py()
    cells = batch.column("email__fc_ct").to_pylist()
    cells[victim] = cells[victim][:-1] + bytes([cells[victim][-1] ^ 1])
    at = batch.schema.get_field_index("email__fc_ct")
    broken = batch.set_column(at, batch.schema.field(at), pa.array(cells, pa.binary()))
    with pytest.raises(IntegrityError, match=rf"^{rel} row {victim}, users.email: ciphertext failed authentication"):
        decrypt_rows(broken, spec, entry, cache, rows, rel)


def encrypt_in_child(results: Any) -> None:
    values = pa.array([f"v{i}" for i in range(20_000)])
    cells = encrypt_column(KEY, PREFIX_UNKEYED, values, None)
    results.put(PYTHON.decrypt(KEY, PREFIX_UNKEYED, cells, None).equals(values.cast(pa.binary())))


def test_a_forked_child_encrypts_on_threads_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIELDCRYPT_THREADS", "2")
    monkeypatch.setattr(kernels, "PARALLEL_MIN_CELLS", 10)
    encrypt_column(KEY, PREFIX_UNKEYED, pa.array([f"v{i}" for i in range(1000)]), None)  # the parent's pool runs
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=encrypt_in_child, args=(results,))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung waiting for the parent's kernel threads")
    assert child.exitcode == 0
    assert results.get(timeout=5) is True


@pytest.mark.parametrize(("writer", "reader"), DIRECTIONS)
def test_row_keys_longer_than_the_scratch_buffer_cross_between_kernels(writer: Kernel, reader: Kernel) -> None:
    sizes = [0, 1, 511, 512, 513, 600, 5000, 70_000]
    values = pa.array([f"value {size}" for size in sizes])
    keys = pa.array([os.urandom(size) for size in sizes], pa.binary())
    cells = writer.encrypt(KEY, PREFIX_KEYED, values, keys)
    assert reader.decrypt(KEY, PREFIX_KEYED, cells, keys).to_pylist() == plain_bytes(values)
    other = pa.array([key[:-1] + b"\x00" if key else b"\x00" for key in keys.to_pylist()], pa.binary())
    assert failure(reader, cells, other)[0] == 0
    last = keys[-1].as_py()
    last_changed = pa.array([*keys.to_pylist()[:-1], last[:-1] + bytes([last[-1] ^ 1])], pa.binary())
    assert failure(reader, cells, last_changed)[0] == len(sizes) - 1


@pytest.fixture(params=["direct provider path", "evp path"])
def nonce_path(request: pytest.FixtureRequest) -> Any:
    """The native kernel on each of its paths into OpenSSL (fieldcrypt/_native.c, cell_cipher)."""
    module = NATIVE._module  # type: ignore[attr-defined]
    on = request.param == "direct provider path"
    if on and not module.DIRECT_PATH_PROVEN:
        pytest.skip("the direct provider path failed its self-test on this libcrypto")
    previous = module.use_direct_path(on)
    yield request.param
    module.use_direct_path(previous)


def test_the_direct_provider_path_passed_its_self_test_on_our_openssl() -> None:
    assert NATIVE._module.DIRECT_PATH_PROVEN == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize(("writer", "reader"), DIRECTIONS)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(column=columns())
def test_both_nonce_paths_write_and_read_the_reference_format(
    nonce_path: str, writer: Kernel, reader: Kernel, column: tuple[pa.Array, pa.Array | None]
) -> None:
    values, row_keys = column
    cells = writer.encrypt(KEY, prefix_for(row_keys), values, row_keys)
    assert reader.decrypt(KEY, prefix_for(row_keys), cells, row_keys).to_pylist() == plain_bytes(values)


def test_every_cell_gets_its_own_nonce_on_both_paths(nonce_path: str) -> None:
    values = pa.array(["same value"] * 3000)
    cells = NATIVE.encrypt(KEY, PREFIX_UNKEYED, values, None).to_pylist()
    assert len({cell[1:13] for cell in cells}) == len(cells)
    assert PYTHON.decrypt(KEY, PREFIX_UNKEYED, pa.array(cells, pa.binary()), None).to_pylist() == [b"same value"] * 3000


def test_a_flipped_tag_bit_fails_at_its_cell_on_both_paths(nonce_path: str) -> None:
    values = pa.array([f"value {i}" for i in range(50)])
    keys = pa.array([str(i).encode() for i in range(50)], pa.binary())
    cells = NATIVE.encrypt(KEY, PREFIX_KEYED, values, keys).to_pylist()
    cells[37] = cells[37][:-1] + bytes([cells[37][-1] ^ 1])
    with pytest.raises(CellFailure) as failure:
        NATIVE.decrypt(KEY, PREFIX_KEYED, pa.array(cells, pa.binary()), keys)
    assert failure.value.index == 37
