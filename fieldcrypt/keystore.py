"""Local keystore: versioned 256-bit master keys in a 0600 JSON file.

The keystore is the one place a master key touches disk, by design of the `local`
provider. It is refused when group or others can read it, and written atomically
(temp file 0600, fsync, rename) so a crash never leaves half a keystore.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from fieldcrypt.errors import KeyMaterialError

MASTER_KEY_SIZE = 32
KEYSTORE_FORMAT = "fieldcrypt-keystore-v1"
WRAPPING_KEY_BITS = 4096


@dataclass
class KeyVersion:
    version: int
    created_at: str
    origin: str  # "generated", "imported", "imported-wrapped"
    state: str  # "enabled" or "retired"
    key: bytes

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
        if current not in self.versions or self.versions[current].state != "enabled":
            raise KeyMaterialError(f"keystore {path}: current version {current} is missing or retired")

    def __repr__(self) -> str:
        return f"Keystore(path={str(self.path)!r}, key_id={self.key_id!r}, current={self.current})"

    # -- creation and loading ------------------------------------------------------------

    @classmethod
    def create(cls, path: Path, workspace: str, key: bytes | None = None, origin: str = "generated") -> Keystore:
        """A new keystore holding version 1; refuses to overwrite an existing file."""
        if path.exists():
            raise KeyMaterialError(f"keystore {path} already exists; refusing to overwrite a master key")
        material = _checked_key(key) if key is not None else secrets.token_bytes(MASTER_KEY_SIZE)
        store = cls(
            path, workspace, f"lk-{secrets.token_hex(8)}", 1, [KeyVersion(1, _now(), origin, "enabled", material)]
        )
        store.save()
        return store

    @classmethod
    def load(cls, path: Path) -> Keystore:
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise KeyMaterialError(f"keystore {path} does not exist; create it with `fieldcrypt key init`") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyMaterialError(
                f"keystore {path} is accessible by group or others (mode {stat.S_IMODE(mode):04o}); "
                f"run `chmod 600 {path}`"
            )
        try:
            doc = json.loads(path.read_text())
            if doc.get("format") != KEYSTORE_FORMAT:
                raise KeyMaterialError(f"keystore {path}: unknown format {doc.get('format')!r}")
            versions = [
                KeyVersion(
                    int(v["version"]),
                    v["created_at"],
                    v["origin"],
                    v["state"],
                    _checked_key(base64.b64decode(v["key"], validate=True)) if v["state"] == "enabled" else b"",
                )
                for v in doc["versions"]
            ]
            return cls(path, doc["workspace"], doc["key_id"], int(doc["current"]), versions)
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise KeyMaterialError(f"keystore {path} is not a valid fieldcrypt keystore") from None

    def save(self) -> None:
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
                }
                for v in sorted(self.versions.values(), key=lambda v: v.version)
            ],
        }
        write_private_file(self.path, json.dumps(doc, indent=2).encode())

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
        version = max(self.versions) + 1
        material = _checked_key(key) if key is not None else secrets.token_bytes(MASTER_KEY_SIZE)
        self.versions[version] = KeyVersion(version, _now(), origin, "enabled", material)
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


def write_private_file(path: Path, content: bytes) -> None:
    """Write a file readable by its owner only, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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


def _checked_key(key: bytes) -> bytes:
    if len(key) != MASTER_KEY_SIZE:
        raise KeyMaterialError(f"master key must be exactly {MASTER_KEY_SIZE} bytes (256 bits), got {len(key)}")
    return key


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
