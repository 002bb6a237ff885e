"""Cell ciphertext and associated data (fieldcrypt.format.cell): layout, round trip, binding, tampering."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fieldcrypt import IntegrityError, KeyMaterialError
from fieldcrypt.format.cell import (
    CELL_OVERHEAD,
    CELL_VERSION,
    NONCE_SIZE,
    TAG_SIZE,
    ad_prefix,
    associated_data,
    decrypt_cell,
    encrypt_cells,
    new_cipher,
)

DEK = bytes(range(32))
CIPHER = new_cipher(DEK)
PREFIX = ad_prefix("users", "email", has_row_key=True)
PREFIX_NO_KEY = ad_prefix("users", "email", has_row_key=False)

texts = st.text(max_size=300) | st.sampled_from(["", "é", "😀" * 50, "\x00", "a" * 5000])


def encrypt_one(value: str, row_key: bytes | None = b"42", prefix: bytes = PREFIX) -> bytes:
    return encrypt_cells(CIPHER, prefix, [value.encode()], None if row_key is None else [row_key])[0]


def decrypt_one(cell: bytes, row_key: bytes | None = b"42", prefix: bytes = PREFIX) -> bytes:
    return decrypt_cell(CIPHER, cell, associated_data(prefix, row_key), "users.email row 0")


@settings(max_examples=60, deadline=None)
@given(value=texts, row_key=st.binary(max_size=40))
def test_cell_round_trips_any_text_with_a_row_key(value: str, row_key: bytes) -> None:
    cell = encrypt_one(value, row_key)
    assert decrypt_one(cell, row_key).decode() == value


@settings(max_examples=30, deadline=None)
@given(value=texts)
def test_cell_round_trips_any_text_without_a_row_key(value: str) -> None:
    cell = encrypt_one(value, None, PREFIX_NO_KEY)
    assert decrypt_one(cell, None, PREFIX_NO_KEY).decode() == value


@settings(max_examples=30, deadline=None)
@given(value=texts)
def test_cell_is_version_nonce_ciphertext_tag(value: str) -> None:
    cell = encrypt_one(value)
    assert cell[0] == CELL_VERSION == 1
    assert len(cell) == 1 + NONCE_SIZE + len(value.encode()) + TAG_SIZE
    assert CELL_OVERHEAD == 29


def test_each_cell_gets_a_fresh_nonce() -> None:
    cells = encrypt_cells(CIPHER, PREFIX, [b"same"] * 200, [b"7"] * 200)
    nonces = {cell[1 : 1 + NONCE_SIZE] for cell in cells}
    assert len(nonces) == 200
    assert len(set(cells)) == 200


def test_cell_moved_to_another_row_fails_authentication() -> None:
    cell = encrypt_one("someone@example.com", b"42")
    with pytest.raises(IntegrityError, match="failed authentication"):
        decrypt_one(cell, b"43")


def test_cell_moved_to_another_attribute_fails_authentication() -> None:
    cell = encrypt_one("someone@example.com")
    with pytest.raises(IntegrityError, match="failed authentication"):
        decrypt_one(cell, prefix=ad_prefix("users", "phone", has_row_key=True))


def test_cell_moved_to_another_dataset_fails_authentication() -> None:
    cell = encrypt_one("someone@example.com")
    with pytest.raises(IntegrityError, match="failed authentication"):
        decrypt_one(cell, prefix=ad_prefix("events", "email", has_row_key=True))


def test_cell_under_another_data_key_fails_authentication() -> None:
    cell = encrypt_one("someone@example.com")
    other = new_cipher(os.urandom(32))
    with pytest.raises(IntegrityError, match="wrong data key"):
        decrypt_cell(other, cell, associated_data(PREFIX, b"42"), "users.email row 0")


@settings(max_examples=40, deadline=None)
@given(value=st.text(max_size=40), data=st.data())
def test_any_bit_flip_is_detected(value: str, data: st.DataObject) -> None:
    cell = bytearray(encrypt_one(value))
    position = data.draw(st.integers(0, len(cell) - 1), label="byte")
    cell[position] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    with pytest.raises(IntegrityError) as raised:
        decrypt_one(bytes(cell))
    assert "users.email row 0" in str(raised.value)


@settings(max_examples=40, deadline=None)
@given(value=st.text(max_size=40), data=st.data())
def test_any_truncation_is_detected(value: str, data: st.DataObject) -> None:
    cell = encrypt_one(value)
    cut = data.draw(st.integers(0, len(cell) - 1), label="kept bytes")
    with pytest.raises(IntegrityError):
        decrypt_one(cell[:cut])


def test_cell_shorter_than_the_overhead_names_its_length() -> None:
    with pytest.raises(IntegrityError, match="ciphertext is 28 bytes, shorter than the 29-byte minimum"):
        decrypt_one(encrypt_one("")[:-1])


def test_unknown_cell_version_is_refused() -> None:
    cell = b"\x02" + encrypt_one("x")[1:]
    with pytest.raises(IntegrityError, match="unknown cell format version 2"):
        decrypt_one(cell)


def test_error_never_contains_the_plaintext() -> None:
    secret = "secret.person@example.com"
    cell = encrypt_one(secret, b"1")
    with pytest.raises(IntegrityError) as raised:
        decrypt_one(cell, b"2")
    assert secret not in str(raised.value)
    assert secret not in repr(raised.value)


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_data_key_of_the_wrong_length_is_refused(size: int) -> None:
    with pytest.raises(KeyMaterialError, match=f"data key must be 32 bytes, got {size}"):
        new_cipher(b"\x00" * size)


@settings(max_examples=50, deadline=None)
@given(
    first=st.tuples(st.text(max_size=6), st.text(max_size=6), st.none() | st.binary(max_size=6)),
    second=st.tuples(st.text(max_size=6), st.text(max_size=6), st.none() | st.binary(max_size=6)),
)
def test_associated_data_is_unambiguous(
    first: tuple[str, str, bytes | None], second: tuple[str, str, bytes | None]
) -> None:
    def ad(place: tuple[str, str, bytes | None]) -> bytes:
        dataset, attribute, row_key = place
        return associated_data(ad_prefix(dataset, attribute, row_key is not None), row_key)

    assert (ad(first) == ad(second)) == (first == second)


def test_associated_data_layout_is_length_prefixed() -> None:
    assert associated_data(ad_prefix("users", "email", True), b"42") == (
        b"\x01" + b"\x00\x05users" + b"\x00\x05email" + b"\x01" + b"\x00\x00\x00\x0242"
    )
    assert associated_data(ad_prefix("ev", "p.e", False), None) == b"\x01\x00\x02ev\x00\x03p.e\x00"
