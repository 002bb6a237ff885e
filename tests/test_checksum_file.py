"""Hadoop `.crc` files beside data files: the codec, and every replace of a data file keeping its `.crc` true.

The real-Spark round trip (Spark reads the recomputed checksums) is tests/test_spark_lake.py.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from demo.sample_data import snapshot_path
from fieldcrypt import IntegrityError, Workspace
from fieldcrypt.lake.checksum_file import HadoopChecksums, checksum_path
from fieldcrypt.lake.store import LakeStore
from tests.conftest import SAMPLE_DAY
from tests.policy_support import backdate_policy

DAY = SAMPLE_DAY.isoformat()
USERS = snapshot_path("users", DAY)


def _with_crc(store: LakeStore, rel: str, bytes_per_checksum: int = 512) -> Path:
    """Give `rel` a true `.crc`, as Hadoop's local file system writes it."""
    crc = Path(store.full_path(checksum_path(rel)))
    crc.write_bytes(HadoopChecksums.of([store.read_bytes(rel)], bytes_per_checksum).encode())
    return crc


def _crc_matches(store: LakeStore, rel: str) -> bool:
    stored = HadoopChecksums.parse(store.read_bytes(checksum_path(rel)), "crc")
    return HadoopChecksums.of([store.read_bytes(rel)], stored.bytes_per_checksum) == stored


def _protectable(workspace: Workspace) -> Workspace:
    workspace.enable("users.email", "email", acknowledge_irreversible=True)
    backdate_policy(workspace)
    return workspace


# -- the codec ----------------------------------------------------------------------------


def test_checksum_path_is_the_hidden_dot_crc_sibling() -> None:
    assert checksum_path("users/date=2026-11-01/part-00000.parquet") == "users/date=2026-11-01/.part-00000.parquet.crc"
    assert checksum_path("part-0.parquet") == ".part-0.parquet.crc"


def test_empty_file_checksum_is_the_header_spark_writes() -> None:
    # Byte for byte the `._SUCCESS.crc` Spark 4.3 writes beside an empty `_SUCCESS`.
    assert HadoopChecksums.of([]).encode() == b"crc\x00\x00\x00\x02\x00"


def test_checksums_are_crc32_not_crc32c_big_endian_per_512_byte_chunk() -> None:
    # 0xCBF43926 is CRC-32's check value of "123456789" (CRC-32C's would be 0xE3069283).
    assert HadoopChecksums.of([b"123456789"]).encode() == b"crc\x00" + struct.pack(">iI", 512, 0xCBF43926)
    data = bytes(range(256)) * 5  # 1280 bytes: two whole chunks and a short one
    expected = [zlib.crc32(data[0:512]), zlib.crc32(data[512:1024]), zlib.crc32(data[1024:])]
    assert HadoopChecksums.of([data]).checksums == tuple(expected)


def test_chunks_span_read_blocks() -> None:
    data = bytes(range(251)) * 40
    assert HadoopChecksums.of([data[:700], data[700:701], data[701:5000], data[5000:]], 100) == HadoopChecksums.of(
        [data], 100
    )


def test_encoded_checksums_parse_back() -> None:
    checksums = HadoopChecksums.of([b"x" * 3000], 1024)
    assert HadoopChecksums.parse(checksums.encode(), "f.crc") == checksums


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"crc",
        b"CRC\x00\x00\x00\x02\x00",
        b"crc\x00\x00\x00\x00\x00",
        b"crc\x00\xff\xff\xff\xff",
        b"crc\x00\x00\x00\x02\x00\x01",
    ],
    ids=["empty", "short", "magic", "zero-chunk", "negative-chunk", "partial-crc"],
)
def test_malformed_checksum_file_is_refused_by_name(raw: bytes) -> None:
    with pytest.raises(IntegrityError, match="/lake/.f.crc"):
        HadoopChecksums.parse(raw, "/lake/.f.crc")


# -- kept true by every replace ----------------------------------------------------------


def test_protect_recomputes_the_crc_of_the_replaced_file(local_workspace: Workspace) -> None:
    store = local_workspace.store
    crc = _with_crc(store, USERS)
    before = crc.read_bytes()
    assert _protectable(local_workspace).protect("users", DAY).rewritten
    assert crc.read_bytes() != before
    assert _crc_matches(store, USERS)


def test_recomputed_crc_keeps_the_files_bytes_per_checksum(local_workspace: Workspace) -> None:
    store = local_workspace.store
    _with_crc(store, USERS, bytes_per_checksum=4096)
    _protectable(local_workspace).protect("users", DAY)
    assert HadoopChecksums.parse(store.read_bytes(checksum_path(USERS)), "crc").bytes_per_checksum == 4096
    assert _crc_matches(store, USERS)


def test_file_without_crc_gets_none(local_workspace: Workspace) -> None:
    _protectable(local_workspace).protect("users", DAY)
    assert not Path(local_workspace.store.full_path(checksum_path(USERS))).exists()


def test_rotation_recomputes_the_crc(local_workspace: Workspace) -> None:
    store = local_workspace.store
    _protectable(local_workspace).protect("users", DAY)
    crc = _with_crc(store, USERS)
    before = crc.read_bytes()
    local_workspace.start_rotation()
    assert local_workspace.rotate("users", DAY).rewritten
    assert crc.read_bytes() != before and _crc_matches(store, USERS)


def test_reindex_recomputes_the_crc(local_workspace: Workspace) -> None:
    store = local_workspace.store
    local_workspace.enable("users.email", "email", acknowledge_irreversible=True, blind_index=True)
    backdate_policy(local_workspace)
    local_workspace.protect("users", DAY)
    crc = _with_crc(store, USERS)
    before = crc.read_bytes()
    local_workspace.start_reindex("users.email")
    assert local_workspace.reindex("users", DAY).files_rewritten == 1
    assert crc.read_bytes() != before and _crc_matches(store, USERS)


def test_file_that_does_not_match_its_crc_is_refused_and_left_alone(local_workspace: Workspace) -> None:
    store = local_workspace.store
    crc = _with_crc(store, USERS)
    damaged = bytearray(crc.read_bytes())
    damaged[-1] ^= 0x01  # as if the file's last chunk had rotted on disk
    crc.write_bytes(bytes(damaged))
    data = Path(store.full_path(USERS)).read_bytes()
    with pytest.raises(IntegrityError, match=r"does not match its Hadoop checksum file .*\.part"):
        _protectable(local_workspace).protect("users", DAY)
    assert Path(store.full_path(USERS)).read_bytes() == data
    assert crc.read_bytes() == bytes(damaged)


class _Crash(Exception):
    pass


@pytest.mark.parametrize("step", ["replace_if", "write_bytes"])
def test_a_crash_during_the_replace_never_leaves_a_mismatching_crc(
    local_workspace: Workspace, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    # Fault injected by patching the store: a real file system cannot be made to die between
    # two steps on cue. `replace_if`: before the data file is replaced; `write_bytes`: after it,
    # before the new .crc is written. Either way the pair on disk is consistent or has no .crc.
    store = local_workspace.store
    _with_crc(store, USERS)
    original: Callable[..., Any] = getattr(LakeStore, step)

    def crash(self: LakeStore, *args: Any, **kwargs: Any) -> Any:
        if step == "write_bytes" and not str(args[0]).endswith(".crc"):
            return original(self, *args, **kwargs)  # control files (policy, audit) are written as usual
        raise _Crash(step)

    before = store.read_bytes(USERS)
    _protectable(local_workspace)
    monkeypatch.setattr(LakeStore, step, crash)
    with pytest.raises(_Crash):
        local_workspace.protect("users", DAY)
    assert (store.read_bytes(USERS) == before) == (step == "replace_if")
    assert not store.exists(checksum_path(USERS))
