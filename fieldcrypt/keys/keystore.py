"""Local keystore: versioned 256-bit master keys in a 0600 JSON file.

The keystore is the one place a master key touches disk, by design of the `local`
provider. It is opened without following symlinks and refused when another user owns
it or group or others can read it (both checked on the open descriptor). It is written
atomically (temp file 0600, fsync, rename, fsync of the directory) so a crash never
leaves half a keystore, and created with a hard link that fails if the name exists, so
two creators can never overwrite each other's key.

Each version carries a key check value (KCV, docs/FORMAT.md section 5): the first 16
bytes of HMAC-SHA256(key, "fieldcrypt key check value v1"). A version whose bytes do
not match its KCV is a wrong master key and is refused when the keystore is loaded.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from fieldcrypt.errors import ConcurrentUpdateError, KeyMaterialError, KeyVersionError, WrongMasterKeyError
from fieldcrypt.lake.store import locked_directory

MASTER_KEY_SIZE = 32
KCV_LABEL = b"fieldcrypt key check value v1"
KCV_SIZE = 16
_KEY_ID = re.compile(r"lk-[0-9a-f]{16}")
_VERSION = re.compile(r"[1-9][0-9]{0,8}")
KEYSTORE_FORMAT = "fieldcrypt-keystore-v1"
WRAPPING_KEY_BITS = 4096


@dataclass
class KeyVersion:
    version: int
    created_at: str
    origin: str  # "generated", "imported", "imported-wrapped"
    state: str  # "enabled" or "retired"
    key: bytes
    kcv: str = ""  # hex key check value; "" only in keystores written before KCVs existed

    def __repr__(self) -> str:  # never show key bytes, even in a traceback's locals
        return f"KeyVersion(version={self.version}, origin={self.origin!r}, state={self.state!r})"


class Keystore:
    """A workspace's local master key and its versions."""

    def __init__(self, path: Path, workspace: str, key_id: str, current: int, versions: list[KeyVersion]) -> None:
        self.path = path
        self.workspace = workspace
        self.key_id = key_id
        self.current = current
        self.versions = {v.version: v for v in versions}
        self._loaded: str | None = None  # the file's identity when read: save() is a compare-and-swap on it
        if current not in self.versions or self.versions[current].state != "enabled":
            raise KeyMaterialError(f"keystore {path}: current version {current} is missing or retired")

    def __repr__(self) -> str:
        return f"Keystore(path={str(self.path)!r}, key_id={self.key_id!r}, current={self.current})"

    # -- creation and loading ------------------------------------------------------------

    @classmethod
    def create(cls, path: Path, workspace: str, key: bytes | None = None, origin: str = "generated") -> Keystore:
        """A new keystore holding version 1; refuses to overwrite an existing file.

        The key is checked before anything is written; the file is published with a hard
        link, which fails if the name exists even when another process just created it.
        """
        material = _checked_key(key) if key is not None else secrets.token_bytes(MASTER_KEY_SIZE)
        if os.path.lexists(path):
            raise KeyMaterialError(f"keystore {path} already exists; refusing to overwrite a master key")
        store = cls(
            path,
            workspace,
            f"lk-{secrets.token_hex(8)}",
            1,
            [KeyVersion(1, _now(), origin, "enabled", material, key_check_value(material))],
        )
        write_private_file(path, store._document(), exclusive=True)
        store._loaded = _file_identity(path)
        return store

    @classmethod
    def load(cls, path: Path) -> Keystore:
        """Open (no symlinks), check owner and mode on the same descriptor, parse, check every KCV."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KeyMaterialError(f"keystore {path} does not exist; create it with `fieldcrypt key init`") from None
        except OSError as exc:  # ELOOP: the name is a symlink
            raise KeyMaterialError(
                f"keystore {path} cannot be opened safely ({os.strerror(exc.errno or 0)}); "
                "it must be a regular file, not a symlink"
            ) from None
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            identity = f"{info.st_dev}:{info.st_ino}:{info.st_ctime_ns}"
            if not stat.S_ISREG(info.st_mode):
                raise KeyMaterialError(f"keystore {path} is not a regular file")
            if info.st_uid != os.geteuid():
                raise KeyMaterialError(
                    f"keystore {path} is owned by uid {info.st_uid}, not by this process's user ({os.geteuid()})"
                )
            mode = info.st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise KeyMaterialError(
                    f"keystore {path} is accessible by group or others (mode {stat.S_IMODE(mode):04o}); "
                    f"run `chmod 600 {path}`"
                )
            raw = handle.read()
        try:
            doc = json.loads(raw)
            if doc.get("format") != KEYSTORE_FORMAT:
                raise KeyMaterialError(f"keystore {path}: unknown format {doc.get('format')!r}")
            key_id = doc["key_id"]
            if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
                raise KeyMaterialError(f"keystore {path}: key id is not of the form lk-<16 hex digits>")
            versions = [
                KeyVersion(
                    _json_version(v["version"], path),
                    v["created_at"],
                    v["origin"],
                    v["state"],
                    _checked_length(base64.b64decode(v["key"], validate=True)) if v["state"] == "enabled" else b"",
                    str(v.get("kcv", "")),
                )
                for v in doc["versions"]
            ]
            store = cls(path, doc["workspace"], key_id, _json_version(doc["current"], path), versions)
            store._loaded = identity
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise KeyMaterialError(f"keystore {path} is not a valid fieldcrypt keystore") from None
        for entry in store.versions.values():
            if (
                entry.state == "enabled"
                and entry.kcv
                and not hmac.compare_digest(entry.kcv, key_check_value(entry.key))
            ):
                raise WrongMasterKeyError(
                    f"wrong master key: keystore {path} version {entry.version} of {key_id} does not match its "
                    "key check value (the key bytes were altered or replaced); restore the keystore from backup"
                )
        return store

    def missing_check_values(self) -> list[int]:
        """Enabled versions written before KCVs existed (see `add_missing_check_values`)."""
        return sorted(v.version for v in self.versions.values() if v.state == "enabled" and not v.kcv)

    def add_missing_check_values(self) -> list[int]:
        """Migration: store the KCV of every enabled version that has none; returns those versions."""
        missing = self.missing_check_values()
        for version in missing:
            self.versions[version].kcv = key_check_value(self.versions[version].key)
        if missing:
            self.save()
        return missing

    def check_value(self, version: int) -> str:
        entry = self.versions.get(version)
        if entry is None:
            raise KeyMaterialError(f"master key {self.key_id} has no version {version} in keystore {self.path}")
        return entry.kcv or (key_check_value(entry.key) if entry.state == "enabled" else "")

    def next_version(self) -> int:
        return max(self.versions) + 1

    def save(self) -> None:
        """Write the keystore, only if it is still the file this object read (another worker's version is kept).

        Two processes adding a version at once would otherwise each generate key bytes and
        the second rename would drop the first one's: the key its lake was just bound to.
        """
        with locked_directory(str(self.path.parent), str(self.path)):
            if self._loaded is not None and _file_identity(self.path) != self._loaded:
                raise ConcurrentUpdateError(
                    f"keystore {self.path} changed while this process held it (another worker added or retired a "
                    "version); nothing was written, run again"
                )
            write_private_file(self.path, self._document())
            self._loaded = _file_identity(self.path)

    def _document(self) -> bytes:
        doc = {
            "format": KEYSTORE_FORMAT,
            "workspace": self.workspace,
            "key_id": self.key_id,
            "current": self.current,
            "versions": [
                {
                    "version": v.version,
                    "created_at": v.created_at,
                    "origin": v.origin,
                    "state": v.state,
                    "key": base64.b64encode(v.key).decode(),
                    "kcv": v.kcv,
                }
                for v in sorted(self.versions.values(), key=lambda v: v.version)
            ],
        }
        return json.dumps(doc, indent=2).encode()

    # -- versions ------------------------------------------------------------------------

    def key_for(self, version: int) -> bytes:
        entry = self.versions.get(version)
        if entry is None:
            raise KeyMaterialError(f"master key {self.key_id} has no version {version} in keystore {self.path}")
        if entry.state != "enabled":
            raise KeyMaterialError(f"master key {self.key_id} version {version} is retired and no longer decrypts")
        return entry.key

    def add_version(self, key: bytes | None = None, origin: str = "generated") -> int:
        """Add and switch to a new version (rotation); older versions keep decrypting."""
        version = self.next_version()
        material = _checked_key(key) if key is not None else secrets.token_bytes(MASTER_KEY_SIZE)
        self.versions[version] = KeyVersion(version, _now(), origin, "enabled", material, key_check_value(material))
        self.current = version
        self.save()
        return version

    def retire(self, version: int) -> None:
        """Retire an old version: it stops decrypting. The current version cannot be retired."""
        if version == self.current:
            raise KeyMaterialError(f"refusing to retire the current version {version} of master key {self.key_id}")
        self.key_for(version)
        self.versions[version].state = "retired"
        self.versions[version].key = b""
        self.save()


def write_private_file(path: Path, content: bytes, *, exclusive: bool = False) -> None:
    """Write a file readable by its owner only, atomically, and fsync its directory.

    `exclusive`: publish with link(2), which fails if `path` exists (never overwrites).
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise KeyMaterialError(f"{path} already exists; refusing to overwrite a master key") from None
        else:
            os.replace(tmp, path)
        _fsync_directory(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _file_identity(path: Path) -> str | None:
    try:
        info = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return f"{info.st_dev}:{info.st_ino}:{info.st_ctime_ns}"


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def key_check_value(key: bytes) -> str:
    """The KCV of a master key: hex of HMAC-SHA256(key, KCV_LABEL)[:16] (docs/FORMAT.md section 5).

    A MAC of a fixed public label under the key: it identifies the key and tells nothing
    else about it (no encryption of zeros, which would double as a known-plaintext block).
    """
    return hmac.digest(key, KCV_LABEL, hashlib.sha256)[:KCV_SIZE].hex()


def parse_key_version(text: str, what: str = "master key version") -> int:
    """The one canonical form of a local key version: ASCII digits, no leading zero."""
    if not _VERSION.fullmatch(text):
        raise KeyVersionError(
            f"{what} {text!r} is not canonical: expected ASCII digits without a leading zero (1, 2, ...)"
        )
    return int(text)


def _json_version(value: object, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise KeyVersionError(f"keystore {path}: version {value!r} is not a positive integer")
    return value


def parse_base64_key(text: str) -> bytes:
    """A customer-provided key: standard base64 (padded) of exactly 32 bytes.

    One trailing newline is accepted (files and `echo` end with one); any other
    whitespace is refused rather than guessed around.
    """
    if text.endswith("\n"):
        text = text[:-2] if text.endswith("\r\n") else text[:-1]
    if not text:
        raise KeyMaterialError("customer key is empty; expected standard base64 of 32 bytes")
    if any(ch.isspace() for ch in text):
        raise KeyMaterialError("customer key contains whitespace; expected one line of standard base64 of 32 bytes")
    if any(ch in "-_" for ch in text):
        raise KeyMaterialError("customer key uses the URL-safe base64 alphabet; expected standard base64 (+ and /)")
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise KeyMaterialError("customer key is not valid base64 (bad character or padding)") from None
    return _checked_key(key)


def new_wrapping_key(private_path: Path) -> bytes:
    """Create an RSA key pair for importing a wrapped customer key; returns the public PEM.

    The private half stays next to the keystore (0600) until an import uses it.
    """
    private = rsa.generate_private_key(public_exponent=65537, key_size=WRAPPING_KEY_BITS)
    write_private_file(
        private_path,
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def unwrap_imported_key(private_path: Path, wrapped: bytes) -> bytes:
    """Decrypt an RSA-OAEP-SHA256 (MGF1-SHA256) wrapped customer key of 32 bytes."""
    try:
        pem = private_path.read_bytes()
    except FileNotFoundError:
        raise KeyMaterialError(f"no wrapping key at {private_path}; run `fieldcrypt key wrapping-key` first") from None
    private = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(private, rsa.RSAPrivateKey):
        raise KeyMaterialError(f"wrapping key {private_path} is not an RSA key")
    expected = private.key_size // 8
    if len(wrapped) != expected:
        raise KeyMaterialError(
            f"wrapped customer key is {len(wrapped)} bytes; RSA-{private.key_size} OAEP output is {expected}"
        )
    try:
        key = private.decrypt(
            wrapped, padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
        )
    except ValueError:
        raise KeyMaterialError(
            "wrapped customer key did not decrypt with the wrapping key "
            "(wrong public key, or not RSA-OAEP with SHA-256)"
        ) from None
    return _checked_key(key)


def _checked_length(key: bytes) -> bytes:
    if len(key) != MASTER_KEY_SIZE:
        raise KeyMaterialError(f"master key must be exactly {MASTER_KEY_SIZE} bytes (256 bits), got {len(key)}")
    return key


def _checked_key(key: bytes) -> bytes:
    """A key about to become a master key: right length, and not a constant (all bytes equal)."""
    _checked_length(key)
    if len(set(key)) == 1:
        raise KeyMaterialError(
            "master key is refused: all 32 bytes are the same value (a placeholder or test key, not a secret)"
        )
    return key


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
