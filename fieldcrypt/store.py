"""The lake's storage: a local folder or an `s3://bucket/prefix`, through pyarrow.fs.

Paths are relative to the lake root. Replacement is atomic: a local file is renamed
over its target (after fsync); on S3 a temporary object is copied over the target in
one CopyObject, which readers see whole or not at all.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import pyarrow as pa
import pyarrow.fs as pafs

from fieldcrypt.errors import InputError

TEMP_MARKER = ".fieldcrypt-tmp-"
STALE_TEMP_SECONDS = 6 * 3600  # far longer than any run takes to write and verify one file


@dataclass(frozen=True)
class FileVersion:
    """What identifies the content of a stored file without reading it."""

    size: int
    mtime_ns: int | None


class LakeStore:
    """A lake root on a pyarrow filesystem."""

    def __init__(self, uri: str, filesystem: pafs.FileSystem, base: str) -> None:
        self.uri = uri
        self.filesystem = filesystem
        self._base = base.rstrip("/")
        self.is_local = isinstance(filesystem, pafs.LocalFileSystem)

    def __repr__(self) -> str:
        return f"LakeStore({self.uri!r})"

    @classmethod
    def from_uri(cls, uri: str, *, endpoint_url: str | None = None, region: str | None = None) -> LakeStore:
        """A local path, `file://` path or `s3://bucket/prefix` (credentials: standard AWS chain)."""
        if uri.startswith("s3://"):
            kwargs: dict[str, Any] = {
                "region": region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            }
            if endpoint_url:
                scheme, _, host = endpoint_url.partition("://")
                kwargs.update(endpoint_override=host, scheme=scheme)
            filesystem = pafs.S3FileSystem(**{k: v for k, v in kwargs.items() if v})
            return cls(uri.rstrip("/"), filesystem, uri[len("s3://") :])
        path = os.path.abspath(uri[len("file://") :] if uri.startswith("file://") else uri)
        return cls(path, pafs.LocalFileSystem(), path)

    @property
    def supports_append(self) -> bool:
        return self.is_local

    def full_path(self, rel: str) -> str:
        return f"{self._base}/{rel}" if rel else self._base

    def display(self, rel: str) -> str:
        """A path for messages: the URI form a user would type."""
        return f"{self.uri}/{rel}"

    # -- reading -------------------------------------------------------------------------

    def exists(self, rel: str) -> bool:
        return bool(self.filesystem.get_file_info(self.full_path(rel)).type == pafs.FileType.File)

    def version(self, rel: str) -> FileVersion:
        info = self.filesystem.get_file_info(self.full_path(rel))
        if info.type != pafs.FileType.File:
            raise InputError(f"{self.display(rel)} does not exist")
        return FileVersion(int(info.size or 0), info.mtime_ns)

    def open_input(self, rel: str) -> pa.NativeFile:
        try:
            return self.filesystem.open_input_file(self.full_path(rel))
        except FileNotFoundError:
            raise InputError(f"{self.display(rel)} does not exist") from None

    def read_bytes(self, rel: str) -> bytes:
        with self.open_input(rel) as handle:
            data: bytes = handle.read()
            return data

    def list_files(self, rel_dir: str, suffix: str = "") -> list[str]:
        """Relative paths of the files below `rel_dir`, sorted; temporary files left out."""
        selector = pafs.FileSelector(self.full_path(rel_dir), recursive=True, allow_not_found=True)
        prefix = self._base + "/"
        found = []
        for info in self.filesystem.get_file_info(selector):
            if info.type == pafs.FileType.File and info.path.endswith(suffix) and TEMP_MARKER not in info.base_name:
                found.append(info.path[len(prefix) :] if info.path.startswith(prefix) else info.path)
        return sorted(found)

    def list_file_versions(self, rel_dir: str) -> dict[str, FileVersion]:
        """`list_files(rel_dir)` with each file's size and modification time, from the same listing."""
        selector = pafs.FileSelector(self.full_path(rel_dir), recursive=True, allow_not_found=True)
        prefix = self._base + "/"
        found = {}
        for info in self.filesystem.get_file_info(selector):
            if info.type == pafs.FileType.File and TEMP_MARKER not in info.base_name:
                rel = info.path[len(prefix) :] if info.path.startswith(prefix) else info.path
                found[rel] = FileVersion(int(info.size or 0), info.mtime_ns)
        return dict(sorted(found.items()))

    # -- writing -------------------------------------------------------------------------

    def temp_path(self, rel: str) -> str:
        """A hidden sibling name (pyarrow, polars and DuckDB skip dot-files in a dataset)."""
        head, _, name = rel.rpartition("/")
        temp = f".{name}{TEMP_MARKER}{secrets.token_hex(6)}"
        return f"{head}/{temp}" if head else temp

    @contextlib.contextmanager
    def open_output(self, rel: str) -> Iterator[IO[bytes] | pa.NativeFile]:
        """A new file; on a local lake it is fsynced before the handle closes."""
        full = self.full_path(rel)
        if self.is_local:
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "xb") as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
        else:
            with self.filesystem.open_output_stream(full) as stream:
                yield stream

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a whole file atomically (temp then replace)."""
        temp = self.temp_path(rel)
        try:
            with self.open_output(temp) as handle:
                handle.write(data)
            self.replace(temp, rel)
        finally:
            self.delete(temp)

    def append_text(self, rel: str, text: str) -> None:
        """Append to a local file in one write(2) call with O_APPEND."""
        if not self.is_local:
            raise NotImplementedError("append is only supported on a local lake")
        full = self.full_path(rel)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)

    def replace(self, temp_rel: str, rel: str) -> None:
        """Atomically make `rel` hold what `temp_rel` holds."""
        src, dst = self.full_path(temp_rel), self.full_path(rel)
        if self.is_local:
            _keep_mode(src, dst)
            os.replace(src, dst)
            dir_fd = os.open(os.path.dirname(dst), os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        else:
            self.filesystem.copy_file(src, dst)
            self.filesystem.delete_file(src)

    def sweep_temps(self, rel: str, older_than_seconds: float = STALE_TEMP_SECONDS) -> int:
        """Delete temporary siblings of `rel` left by a crashed run; returns how many.

        Only temps older than `older_than_seconds` go, so a run still writing one keeps it.
        """
        head, _, name = rel.rpartition("/")
        selector = pafs.FileSelector(self.full_path(head), recursive=False, allow_not_found=True)
        cutoff = time.time_ns() - int(older_than_seconds * 1e9)
        swept = 0
        for info in self.filesystem.get_file_info(selector):
            stale = info.mtime_ns is not None and info.mtime_ns < cutoff
            if info.base_name.startswith(f".{name}{TEMP_MARKER}") and stale:
                self.delete(f"{head}/{info.base_name}" if head else info.base_name)
                swept += 1
        return swept

    def delete(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError, OSError):
            self.filesystem.delete_file(self.full_path(rel))


def _keep_mode(src: str, dst: str) -> None:
    """Give the replacement the permission bits of the file it replaces (a 0600 file stays 0600)."""
    try:
        mode = stat.S_IMODE(os.stat(dst).st_mode)
    except FileNotFoundError:
        return
    os.chmod(src, mode)
