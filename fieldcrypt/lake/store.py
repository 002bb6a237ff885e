"""The lake's storage: a local folder or an `s3://bucket/prefix`, through pyarrow.fs.

Paths are relative to the lake root. Replacement is atomic: a local file is renamed
over its target (after fsync); on S3 a temporary object is copied over the target in
one CopyObject, which readers see whole or not at all.

Several workers may write one lake (docs/OPERATIONS.md, "Concurrent writers"). Every
replacement that depends on what was read is a compare-and-swap on the file's version:
- local: an exclusive `flock` on the file's directory is held from the comparison to
  the rename (and, for control files, across the whole read-modify-write); the version
  includes the inode, which every rename changes.
- S3: the version is the ETag; a control file is written with PutObject `If-Match`
  (`If-None-Match: *` to create), a partition file is copied over with CopyObject
  `If-Match`. S3 answers 412 (or 409 for a concurrent conditional write) to the loser.
The loser of a race gets ConcurrentUpdateError ("changed while ...; run again") and
nothing of its own is written; nothing the winner wrote is lost.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import pyarrow as pa
import pyarrow.fs as pafs

from fieldcrypt.errors import ConcurrentUpdateError, InputError

TEMP_MARKER = ".fieldcrypt-tmp-"
STALE_TEMP_SECONDS = 6 * 3600  # far longer than any run takes to write and verify one file
LOCK_TIMEOUT_SECONDS = 120.0  # a holder does one compare-and-rename (or one small control-file update)
CONTROL_UPDATE_ATTEMPTS = 5
HELD, KEPT, DELETED = "held", "kept", "deleted"  # what `sweep_orphan` did


@dataclass(frozen=True)
class FileVersion:
    """What identifies the content of a stored file without reading it.

    `identity` is what a compare-and-swap compares: the inode (with device and ctime) of a
    local file, which every atomic rename changes, or the ETag of an S3 object.
    """

    size: int
    mtime_ns: int | None
    identity: str | None = None


class LakeStore:
    """A lake root on a pyarrow filesystem."""

    def __init__(self, uri: str, filesystem: pafs.FileSystem, base: str) -> None:
        self.uri = uri
        self.filesystem = filesystem
        self._base = base.rstrip("/")
        self.is_local = isinstance(filesystem, pafs.LocalFileSystem)
        self._s3_options: dict[str, str] = {}
        self._s3_client: Any = None
        self._held = threading.local()  # directories this thread holds the flock of: path -> (fd, depth)

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
            lake = cls(uri.rstrip("/"), filesystem, uri[len("s3://") :])
            lake._s3_options = {
                k: v for k, v in {"endpoint_url": endpoint_url, "region_name": kwargs["region"]}.items() if v
            }
            return lake
        path = os.path.abspath(uri[len("file://") :] if uri.startswith("file://") else uri)
        return cls(path, pafs.LocalFileSystem(), path)

    @property
    def s3_endpoint_url(self) -> str | None:
        """The S3-compatible endpoint the lake was opened with (None: AWS's own, or a local lake)."""
        return self._s3_options.get("endpoint_url")

    @property
    def s3_region(self) -> str | None:
        """The S3 lake's region, as given or from AWS_REGION / AWS_DEFAULT_REGION (None: unknown or local)."""
        return self._s3_options.get("region_name")

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
        """The stored file's version (one stat or HEAD); InputError if it does not exist."""
        found = self.version_or_none(rel)
        if found is None:
            raise InputError(f"{self.display(rel)} does not exist")
        return found

    def version_or_none(self, rel: str) -> FileVersion | None:
        if self.is_local:
            try:
                st = os.stat(self.full_path(rel))
            except FileNotFoundError:
                return None
            return None if not stat.S_ISREG(st.st_mode) else _local_version(st)
        bucket, key = self._bucket_key(rel)
        try:
            head = self._s3().head_object(Bucket=bucket, Key=key)
        except Exception as exc:
            if _s3_status(exc) == 404:
                return None
            raise
        return _s3_version(head)

    def read_versioned(self, rel: str) -> tuple[bytes, FileVersion] | None:
        """A whole (small) file and the version of exactly those bytes; None if it does not exist."""
        if self.is_local:
            try:
                with open(self.full_path(rel), "rb") as handle:
                    return handle.read(), _local_version(os.fstat(handle.fileno()))
            except FileNotFoundError:
                return None
        bucket, key = self._bucket_key(rel)
        try:
            response = self._s3().get_object(Bucket=bucket, Key=key)
        except Exception as exc:
            if _s3_status(exc) == 404:
                return None
            raise
        with contextlib.closing(response["Body"]) as body:
            data: bytes = body.read()
        return data, _s3_version(response)

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

    def list_keys_after(self, rel_dir: str, after: str | None) -> list[str]:
        """S3: the objects below `rel_dir` whose key sorts after `after` (all when None), sorted.

        One ListObjectsV2 page per 1,000 keys from `after` on, not from the start of the prefix:
        what the audit log uses to find its newest record cheaply.
        """
        if self.is_local:
            return [rel for rel in self.list_files(rel_dir) if after is None or rel > after]
        bucket, prefix = self._bucket_key(rel_dir.rstrip("/") + "/")
        root = self._bucket_key("")[1]  # the lake's own prefix inside the bucket ("" for a bucket root)
        strip = len(root) + 1 if root else 0
        start = {"StartAfter": self._bucket_key(after)[1]} if after is not None else {}
        found = []
        for page in self._s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, **start):
            for entry in page.get("Contents", []):
                name = str(entry["Key"])
                if TEMP_MARKER not in name.rsplit("/", 1)[-1]:
                    found.append(name[strip:])
        return sorted(found)

    def list_file_versions(self, rel_dir: str) -> dict[str, FileVersion]:
        """`list_files(rel_dir)` with each file's size and modification time, from the same listing."""
        return {rel: version for rel, version in self.list_all(rel_dir).items() if TEMP_MARKER not in rel}

    def list_all(self, rel_dir: str) -> dict[str, FileVersion]:
        """Every file below `rel_dir`, temporary files included, with its size and modification time."""
        selector = pafs.FileSelector(self.full_path(rel_dir), recursive=True, allow_not_found=True)
        prefix = self._base + "/"
        found = {}
        for info in self.filesystem.get_file_info(selector):
            if info.type == pafs.FileType.File:
                rel = info.path[len(prefix) :] if info.path.startswith(prefix) else info.path
                found[rel] = FileVersion(int(info.size or 0), info.mtime_ns)
        return dict(sorted(found.items()))

    # -- writing -------------------------------------------------------------------------

    def temp_path(self, rel: str) -> str:
        """A hidden sibling name (pyarrow, polars and DuckDB skip dot-files in a dataset)."""
        head, _, name = rel.rpartition("/")
        temp = f".{name}{TEMP_MARKER}{secrets.token_hex(6)}"
        return f"{head}/{temp}" if head else temp

    def create_temp(self, rel: str) -> str:
        """A new temporary sibling of `rel`, held by this process until `release_temp`.

        Local: the temp is created (0600: it may hold plaintext until replaced) and an exclusive
        flock is taken on it, under the directory lock that `sweep_temp` takes too, so a sweeper
        never sees it unheld while its writer lives. The flock is held from creation through
        write, verify and replace or delete; flocks die with their process, so a temp whose
        flock can be taken belongs to a dead run (`sweep_temp`). S3 has no locks: the name only.
        """
        temp = self.temp_path(rel)
        if not self.is_local:
            return temp
        full = self.full_path(temp)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with self.exclusive(temp):
            fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with _HELD_TEMPS_LOCK:
            _HELD_TEMPS[full] = fd
        return temp

    def release_temp(self, temp: str) -> None:
        """Delete a temp made by `create_temp` (if not replaced already) and drop its flock."""
        self.delete(temp)
        with _HELD_TEMPS_LOCK:
            fd = _HELD_TEMPS.pop(self.full_path(temp), None)
        if fd is not None:
            os.close(fd)

    def hold_published(self, temp: str, rel: str) -> None:
        """After `replace(temp, rel)` of a temp this process holds: its flock (on the same inode) stays held on
        `rel` until `release_published(rel)`, not dropped by `release_temp(temp)`. So a file published but not
        yet committed to its table is never swept as a dead run's (`sweep_orphan`). S3: nothing (no locks)."""
        with _HELD_TEMPS_LOCK:
            fd = _HELD_TEMPS.pop(self.full_path(temp), None)
            if fd is not None:
                _HELD_TEMPS[self.full_path(rel)] = fd

    def release_published(self, rel: str) -> None:
        """Drop the flock `hold_published` kept on `rel` (the file itself stays)."""
        with _HELD_TEMPS_LOCK:
            fd = _HELD_TEMPS.pop(self.full_path(rel), None)
        if fd is not None:
            os.close(fd)

    def held(self, rel: str) -> bool:
        """Local: whether a live run holds the flock of `rel` (a temp, or a file `hold_published` keeps). S3: False
        (no locks)."""
        if not self.is_local:
            return False
        full = self.full_path(rel)
        with _HELD_TEMPS_LOCK:
            if full in _HELD_TEMPS:
                return True
        try:
            fd = os.open(full, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            return True
        finally:
            os.close(fd)  # drops the shared lock taken, if any
        return False

    def sweep_temp(self, temp: str, version: FileVersion | None) -> bool:
        """Delete a temporary file a dead run left; False when a live run may still hold it.

        Local: only if its flock can be taken without waiting (its writer is gone), under the
        directory lock `create_temp` holds while creating and locking one. S3 (no locks): only
        if older than STALE_TEMP_SECONDS, far longer than any run takes to write and verify a file.
        """
        return self.sweep_orphan(temp, version, lambda: True) != HELD

    def sweep_orphan(self, rel: str, version: FileVersion | None, still_orphan: Callable[[], bool]) -> str:
        """Delete a file a dead run left (a temp, or a published file its table never referenced) as
        `sweep_temp` does, once `still_orphan()`, asked while the dead run's flock is taken (local) or the file
        is stale (S3), confirms it: HELD (a live run may hold it), KEPT (not an orphan any more) or DELETED."""
        if not self.is_local:
            cutoff = time.time_ns() - int(STALE_TEMP_SECONDS * 1e9)
            if version is None or version.mtime_ns is None or version.mtime_ns >= cutoff:
                return HELD
            if not still_orphan():
                return KEPT
            self.delete(rel)
            return DELETED
        full = self.full_path(rel)
        with _HELD_TEMPS_LOCK:
            if full in _HELD_TEMPS:  # this process's own, still being written
                return HELD
        with self.exclusive(rel):
            try:
                fd = os.open(full, os.O_RDONLY)
            except FileNotFoundError:
                return DELETED
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    return HELD  # its writer is alive
                if not still_orphan():
                    return KEPT
                os.unlink(full)
            finally:
                os.close(fd)
        return DELETED

    @contextlib.contextmanager
    def open_output(self, rel: str) -> Iterator[IO[bytes] | pa.NativeFile]:
        """A new file (or a temp this process holds, from `create_temp`); on a local lake it is fsynced
        before the handle closes."""
        full = self.full_path(rel)
        if self.is_local:
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with _HELD_TEMPS_LOCK:
                held = full in _HELD_TEMPS
            with open(full, "r+b" if held else "xb") as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
        else:
            with self.filesystem.open_output_stream(full) as stream:
                yield stream

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a whole file atomically (temp then replace), whatever is stored; see write_if."""
        temp = self.temp_path(rel)
        try:
            with self.open_output(temp) as handle:
                handle.write(data)
            self.replace(temp, rel)
        finally:
            self.delete(temp)

    def write_if(self, rel: str, data: bytes, expected: FileVersion | None, what: str = "it was read") -> FileVersion:
        """Write a whole small file atomically only if it is still at `expected` (None: only if absent).

        ConcurrentUpdateError when another writer got there first; returns the new version.
        """
        if self.is_local:
            with self.exclusive(rel):
                self._check_unchanged(rel, expected, what)
                self.write_bytes(rel, data)
                return self.version(rel)
        bucket, key = self._bucket_key(rel)
        condition = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": expected.identity or ""}
        try:
            response = self._s3().put_object(Bucket=bucket, Key=key, Body=data, **condition)
        except Exception as exc:
            if _s3_status(exc) in (409, 412):
                raise self._conflict(rel, what) from None
            if _s3_status(exc) is not None:  # a missing bucket, a denied write: storage failed, as pyarrow says it
                raise OSError(f"{self.display(rel)}: {exc}") from exc
            raise
        return FileVersion(len(data), None, str(response.get("ETag", "")) or None)

    def update(self, rel: str, change: Callable[[bytes | None], bytes | None], what: str) -> bool:
        """Read-modify-write of a small control file that never loses another writer's update.

        `change` gets the stored bytes (None: no file) and returns the new bytes, or None to
        leave the file as it is. Local: the directory lock is held across the read, `change`
        and the write. S3: a conditional write; on a conflict the update is read and
        applied again (a few times), so `change` must be a function of what it is given.
        Returns True when the file was written.
        """
        for attempt in range(CONTROL_UPDATE_ATTEMPTS):
            with self.exclusive(rel):
                stored = self.read_versioned(rel)
                data = change(stored[0] if stored else None)
                if data is None:
                    return False
                try:
                    self.write_if(rel, data, stored[1] if stored else None, what)
                    return True
                except ConcurrentUpdateError:
                    if attempt == CONTROL_UPDATE_ATTEMPTS - 1:
                        raise
            time.sleep(0.05 * (attempt + 1) + secrets.randbelow(50) / 1000)
        raise AssertionError("unreachable")

    def replace_if(self, temp_rel: str, rel: str, expected: FileVersion, what: str) -> None:
        """Atomically make `rel` hold what `temp_rel` holds, only if `rel` is still at `expected`."""
        if self.is_local:
            with self.exclusive(rel):
                self._check_unchanged(rel, expected, what)
                self.replace(temp_rel, rel)
            return
        try:
            self.replace(temp_rel, rel, if_match=expected.identity or "")
        except Exception as exc:
            if _s3_status(exc) in (409, 412):
                raise self._conflict(rel, what) from None
            raise

    @contextlib.contextmanager
    def exclusive(self, rel: str) -> Iterator[None]:
        """Local lake: hold an exclusive flock on the directory of `rel` (re-entrant per thread).

        A directory lock, not a lock file: renames replace the file's inode, the
        directory's stays, and no lock file is left in the lake. Each thread opens its own
        descriptor, so threads of one process exclude each other as processes do. S3: no
        lock (the conditional requests decide).
        """
        if not self.is_local:
            yield
            return
        directory = os.path.dirname(self.full_path(rel))
        held: dict[str, int] = self._held.__dict__.setdefault("dirs", {})
        if directory in held:
            held[directory] += 1
            try:
                yield
            finally:
                held[directory] -= 1
            return
        os.makedirs(directory, exist_ok=True)
        with locked_directory(directory, self.display(rel)):
            held[directory] = 1
            try:
                yield
            finally:
                del held[directory]

    def _check_unchanged(self, rel: str, expected: FileVersion | None, what: str) -> None:
        if self.version_or_none(rel) != expected:
            raise self._conflict(rel, what)

    def _conflict(self, rel: str, what: str) -> ConcurrentUpdateError:
        return ConcurrentUpdateError(
            f"{self.display(rel)} changed while {what} (another worker wrote it); nothing was replaced, run again"
        )

    def _bucket_key(self, rel: str) -> tuple[str, str]:
        bucket, _, key = self.full_path(rel).partition("/")
        return bucket, key

    def _s3(self) -> Any:
        if self._s3_client is None:
            import boto3

            self._s3_client = boto3.client("s3", **self._s3_options)
        return self._s3_client

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

    def replace(self, temp_rel: str, rel: str, if_match: str | None = None) -> None:
        """Atomically make `rel` hold what `temp_rel` holds (S3: CopyObject, `If-Match` when given)."""
        src, dst = self.full_path(temp_rel), self.full_path(rel)
        if if_match is not None and not self.is_local:
            bucket, key = self._bucket_key(rel)
            temp_bucket, temp_key = self._bucket_key(temp_rel)
            source = {"Bucket": temp_bucket, "Key": temp_key}
            self._s3().copy_object(Bucket=bucket, Key=key, CopySource=source, IfMatch=if_match)
            self.filesystem.delete_file(src)
            return
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

    def delete(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError, OSError):
            self.filesystem.delete_file(self.full_path(rel))


# Temps this process holds (full path -> the descriptor holding its flock), whichever LakeStore made them:
# `open_output` writes into them, and a sweep in this process leaves them alone without trying their flock.
_HELD_TEMPS: dict[str, int] = {}
_HELD_TEMPS_LOCK = threading.Lock()


def _local_version(st: os.stat_result) -> FileVersion:
    return FileVersion(st.st_size, st.st_mtime_ns, f"{st.st_dev}:{st.st_ino}:{st.st_ctime_ns}")


def _s3_version(response: dict[str, Any]) -> FileVersion:
    modified = response.get("LastModified")
    mtime_ns = int(modified.timestamp() * 1e9) if modified is not None else None
    return FileVersion(int(response.get("ContentLength", 0)), mtime_ns, str(response.get("ETag", "")) or None)


def _s3_status(exc: Exception) -> int | None:
    """The HTTP status of a botocore ClientError (None for anything else)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status is not None else None


@contextlib.contextmanager
def locked_directory(directory: str, where: str) -> Iterator[None]:
    """An exclusive flock on an existing `directory`, waited for up to LOCK_TIMEOUT_SECONDS.

    Not re-entrant: a second lock of the same directory from the same thread waits for itself.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT_SECONDS
        delay = 0.005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if time.monotonic() > deadline:
                raise ConcurrentUpdateError(
                    f"the directory of {where} stayed locked by another worker for {LOCK_TIMEOUT_SECONDS:.0f} s; "
                    "nothing was replaced, run again"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _keep_mode(src: str, dst: str) -> None:
    """Give the replacement the permission bits of the file it replaces (a 0600 file stays 0600)."""
    try:
        mode = stat.S_IMODE(os.stat(dst).st_mode)
    except FileNotFoundError:
        return
    os.chmod(src, mode)
