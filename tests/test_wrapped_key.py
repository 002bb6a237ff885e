"""Wrapped data key values (fieldcrypt.format.wrapped_key) and the local provider's wrapping."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fieldcrypt import IntegrityError, KeyMaterialError, KeyProviderError
from fieldcrypt.format.wrapped_key import WrappedKey
from fieldcrypt.keys.keystore import Keystore
from fieldcrypt.keys.providers.base import EncryptionContext
from fieldcrypt.keys.providers.local import LocalKeyProvider

EMAIL = EncryptionContext("acme", "users", "email")
PHONE = EncryptionContext("acme", "users", "phone")

wrapped_keys = st.builds(
    WrappedKey,
    provider=st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=20),
    key_id=st.text(max_size=80),
    key_version=st.text(max_size=8),
    wrapped=st.binary(max_size=300),
)


@pytest.fixture
def provider(keystore_path: Path) -> LocalKeyProvider:
    return LocalKeyProvider(Keystore.load(keystore_path))


@settings(max_examples=60, deadline=None)
@given(key=wrapped_keys)
def test_wrapped_key_value_round_trips(key: WrappedKey) -> None:
    assert WrappedKey.from_bytes(key.to_bytes()) == key


def test_wrapped_key_layout_names_provider_key_and_version() -> None:
    value = WrappedKey("local", "lk-1", "3", b"\xaa\xbb").to_bytes()
    assert value == b"\x01" + b"\x05local" + b"\x00\x04lk-1" + b"\x00\x013" + b"\x00\x02\xaa\xbb"


def test_master_key_ref_includes_the_version_when_there_is_one() -> None:
    assert WrappedKey("local", "lk-1", "3", b"").master_key_ref == "lk-1#3"
    assert WrappedKey("aws-kms", "arn:aws:kms:eu-west-1:1:key/k", "", b"").master_key_ref == (
        "arn:aws:kms:eu-west-1:1:key/k"
    )


@settings(max_examples=40, deadline=None)
@given(key=wrapped_keys, data=st.data())
def test_truncated_wrapped_key_value_is_refused(key: WrappedKey, data: st.DataObject) -> None:
    value = key.to_bytes()
    cut = data.draw(st.integers(0, len(value) - 1), label="kept bytes")
    with pytest.raises(IntegrityError, match="truncated"):
        WrappedKey.from_bytes(value[:cut])


def test_wrapped_key_value_with_trailing_bytes_is_refused() -> None:
    with pytest.raises(IntegrityError, match="1 trailing bytes"):
        WrappedKey.from_bytes(WrappedKey("local", "lk", "1", b"x").to_bytes() + b"\x00")


def test_unknown_wrapped_key_format_version_is_refused() -> None:
    value = WrappedKey("local", "lk", "1", b"x").to_bytes()
    with pytest.raises(IntegrityError, match="unknown wrapped key format version 9"):
        WrappedKey.from_bytes(b"\x09" + value[1:])


def test_wrapped_key_value_with_non_text_key_id_is_refused() -> None:
    value = b"\x01\x05local\x00\x02\xff\xfe\x00\x011\x00\x00"
    with pytest.raises(IntegrityError, match="non-text"):
        WrappedKey.from_bytes(value)


def test_wrapped_key_field_too_long_for_the_format_is_refused() -> None:
    with pytest.raises(ValueError, match="too long"):
        WrappedKey("local", "k" * 70_000, "1", b"").to_bytes()


# -- local provider wrapping ------------------------------------------------------------


def test_local_data_key_unwraps_to_the_generated_key(provider: LocalKeyProvider) -> None:
    dek, wrapped = provider.generate_data_key(EMAIL)
    assert len(dek) == 32
    assert provider.unwrap(WrappedKey.from_bytes(wrapped.to_bytes()), EMAIL) == dek


def test_local_wrapped_key_says_which_master_key_wrapped_it(provider: LocalKeyProvider, keystore_path: Path) -> None:
    _, wrapped = provider.generate_data_key(EMAIL)
    keystore = Keystore.load(keystore_path)
    assert (wrapped.provider, wrapped.key_id, wrapped.key_version) == ("local", keystore.key_id, "1")
    assert provider.is_current(wrapped)


def test_local_wrapped_key_is_bound_to_its_attribute(provider: LocalKeyProvider) -> None:
    _, wrapped = provider.generate_data_key(EMAIL)
    with pytest.raises(IntegrityError, match="users.phone failed authentication"):
        provider.unwrap(wrapped, PHONE)


def test_local_wrapped_key_is_bound_to_its_workspace(provider: LocalKeyProvider) -> None:
    _, wrapped = provider.generate_data_key(EMAIL)
    with pytest.raises(IntegrityError):
        provider.unwrap(wrapped, EncryptionContext("other", "users", "email"))


@pytest.mark.parametrize("position", [0, 12, 30, 59])
def test_local_wrapped_key_bit_flip_is_detected(provider: LocalKeyProvider, position: int) -> None:
    _, wrapped = provider.generate_data_key(EMAIL)
    body = bytearray(wrapped.wrapped)
    body[position] ^= 0x01
    with pytest.raises(IntegrityError, match="failed authentication"):
        provider.unwrap(WrappedKey(wrapped.provider, wrapped.key_id, wrapped.key_version, bytes(body)), EMAIL)


def test_local_wrapped_key_of_the_wrong_length_is_refused(provider: LocalKeyProvider) -> None:
    _, wrapped = provider.generate_data_key(EMAIL)
    short = WrappedKey(wrapped.provider, wrapped.key_id, wrapped.key_version, wrapped.wrapped[:-1])
    with pytest.raises(IntegrityError, match="59 bytes, expected 60"):
        provider.unwrap(short, EMAIL)


def test_data_key_wrapped_by_another_master_key_is_refused(provider: LocalKeyProvider, tmp_path: Path) -> None:
    other = LocalKeyProvider(Keystore.create(tmp_path / "other.json", "acme"))
    _, wrapped = other.generate_data_key(EMAIL)
    with pytest.raises(
        KeyProviderError, match=f"not by this workspace's local master key {provider.describe().key_id}"
    ):
        provider.unwrap(wrapped, EMAIL)


def test_wrapped_key_relabelled_with_another_version_is_refused(
    provider: LocalKeyProvider, keystore_path: Path
) -> None:
    keystore = Keystore.load(keystore_path)
    keystore.add_version()
    rotated = LocalKeyProvider(keystore)
    _, wrapped = rotated.generate_data_key(EMAIL)
    assert wrapped.key_version == "2"
    relabelled = WrappedKey(wrapped.provider, wrapped.key_id, "1", wrapped.wrapped)
    with pytest.raises(IntegrityError, match="failed authentication"):
        rotated.unwrap(relabelled, EMAIL)


def test_non_numeric_local_key_version_is_refused(provider: LocalKeyProvider) -> None:
    _, wrapped = provider.generate_data_key(EMAIL)
    with pytest.raises(IntegrityError, match="not canonical"):
        provider.unwrap(WrappedKey(wrapped.provider, wrapped.key_id, "x", wrapped.wrapped), EMAIL)


def test_rewrap_moves_a_data_key_to_the_new_version_without_changing_it(keystore_path: Path) -> None:
    keystore = Keystore.load(keystore_path)
    provider = LocalKeyProvider(keystore)
    dek, old = provider.generate_data_key(EMAIL)
    keystore.add_version()
    new = provider.rewrap(old, EMAIL)
    assert (old.key_version, new.key_version) == ("1", "2")
    assert provider.unwrap(new, EMAIL) == dek
    assert provider.unwrap(old, EMAIL) == dek  # the old version still decrypts until retired


def test_retired_master_key_version_no_longer_unwraps(keystore_path: Path) -> None:
    keystore = Keystore.load(keystore_path)
    provider = LocalKeyProvider(keystore)
    _, old = provider.generate_data_key(EMAIL)
    keystore.add_version()
    keystore.retire(1)
    with pytest.raises(KeyMaterialError, match="version 1 is retired"):
        LocalKeyProvider(Keystore.load(keystore_path)).unwrap(old, EMAIL)
