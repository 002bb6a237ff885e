"""The `pkcs11` provider: data keys wrapped with AES-256-GCM inside an HSM, by PKCS#11.

The master key is an AES-256 secret-key object in a token, found by its label. It must
be sensitive, not extractable, and allowed to encrypt and decrypt; anything else is
refused before first use, naming the attribute. Data keys are generated here (os.urandom)
and wrapped by the token with `CKM_AES_GCM`: the master key never leaves the token.

Wrapped bytes (inside the WrappedKey value) are `nonce(12) || ciphertext(32) || tag(16)`;
the associated data binds the token label, the key label and the encryption context
(docs/FORMAT.md, "pkcs11 key wrapping"). The key check value is the GMAC tag of a fixed
label under a fixed nonce that is never used for wrapping (docs/FORMAT.md section 5).

PKCS#11 sessions are not fork-safe and some tokens serialise calls: each process has one
session per (module, token), re-opened after a fork, and every token call holds a lock.
The PIN comes from an environment variable or a file, never from the catalog.
"""

from __future__ import annotations

import hmac
import os
import secrets
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fieldcrypt.errors import AccessDeniedError, ConfigError, IntegrityError, KeyProviderError
from fieldcrypt.format.cell import DEK_SIZE, NONCE_SIZE
from fieldcrypt.format.wrapped_key import WrappedKey
from fieldcrypt.keys.providers.base import EncryptionContext, KeyProvider, MasterKeyInfo

PROVIDER_ID = "pkcs11"
KEY_BITS = 256
TAG_BITS = 128
_WRAPPED_SIZE = NONCE_SIZE + DEK_SIZE + TAG_BITS // 8
KCV_LABEL = b"fieldcrypt pkcs11 key check value v1"
KCV_NONCE = b"fieldcrypt-k"  # 12 bytes; used for the key check value only, never for wrapping
KCV_SIZE = 16
assert len(KCV_NONCE) == NONCE_SIZE

T = TypeVar("T")


@dataclass(frozen=True)
class Pkcs11Settings:
    """How to reach a token: its module, its label, and where its user PIN is (never the PIN)."""

    module: str
    token_label: str
    pin_env: str | None = None
    pin_file: str | None = None

    def __post_init__(self) -> None:
        if not self.module:
            raise ConfigError("the pkcs11 key provider needs the path of the token's PKCS#11 module")
        if not self.token_label:
            raise ConfigError("the pkcs11 key provider needs a token label")
        if bool(self.pin_env) == bool(self.pin_file):
            raise ConfigError("the pkcs11 key provider needs exactly one of pin_env (a variable name) or pin_file")

    def pin(self) -> str:
        if self.pin_env:
            value = os.environ.get(self.pin_env)
            if not value:
                raise ConfigError(f"token {self.token_label}: PIN variable {self.pin_env} is not set")
            return value
        path = Path(self.pin_file or "")
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"token {self.token_label}: PIN file {path} cannot be read ({exc.strerror})") from None
        if not value:
            raise ConfigError(f"token {self.token_label}: PIN file {path} is empty")
        return value


class Pkcs11Token:
    """One logged-in session per process on one token; re-opened after a fork; calls serialised."""

    _registry: dict[tuple[str, str], Pkcs11Token] = {}
    _registry_lock = threading.Lock()

    def __init__(self, settings: Pkcs11Settings) -> None:
        self.settings = settings
        self._lock = threading.RLock()
        self._pid = -1
        self._session: Any = None

    @classmethod
    def for_settings(cls, settings: Pkcs11Settings) -> Pkcs11Token:
        """The process's token object for (module, token label); the PIN source is taken from the first."""
        with cls._registry_lock:
            key = (settings.module, settings.token_label)
            token = cls._registry.get(key)
            if token is None or token.settings != settings:
                token = cls._registry[key] = cls(settings)
            return token

    @property
    def label(self) -> str:
        return self.settings.token_label

    def call(self, operation: str, key_label: str, work: Callable[[Any], T]) -> T:
        """`work(session)` under the lock, with PKCS#11 errors turned into fieldcrypt errors naming the key."""
        import pkcs11.exceptions as p11e

        where = f"PKCS#11 {operation} with key {key_label!r} on token {self.label!r}"
        with self._lock:
            for attempt in (1, 2):
                try:
                    return work(self._open())
                except (p11e.SessionHandleInvalid, p11e.SessionClosed, p11e.DeviceRemoved, p11e.TokenNotPresent):
                    self._session = None  # token gone or session lost: one re-open, then a named error
                    if attempt == 2:
                        raise AccessDeniedError(f"{where}: token is not present or was removed") from None
                except p11e.NoSuchKey:
                    raise AccessDeniedError(f"{where}: no such key in the token (deleted or never created)") from None
                except p11e.MultipleObjectsReturned:
                    raise KeyProviderError(
                        f"{where}: several secret keys carry this label; labels must be unique"
                    ) from None
                except (p11e.EncryptedDataInvalid, p11e.EncryptedDataLenRange, p11e.GeneralError):
                    if operation == "unwrap":
                        raise IntegrityError(
                            f"{where}: wrapped data key failed authentication (tampered, wrong key or wrong context)"
                        ) from None
                    raise KeyProviderError(f"{where}: failed in the token") from None
                except (p11e.PinIncorrect, p11e.PinExpired, p11e.PinLocked, p11e.PinInvalid, p11e.PinLenRange):
                    self._session = None
                    raise AccessDeniedError(f"{where}: the token refused the PIN") from None
                except p11e.NoSuchToken:
                    self._session = None
                    raise AccessDeniedError(
                        f"{where}: no token with this label (removed or never initialised)"
                    ) from None
                except p11e.MultipleTokensReturned:
                    self._session = None
                    raise KeyProviderError(f"{where}: several tokens carry this label; labels must be unique") from None
                except p11e.PKCS11Error as exc:
                    raise KeyProviderError(f"{where}: failed ({type(exc).__name__})") from None
            raise AssertionError("unreachable")

    def _open(self) -> Any:
        pid = os.getpid()
        if self._session is not None and self._pid == pid:
            return self._session
        lib = _library(self.settings.module, forked=self._pid not in (-1, pid))
        token = _find_token(lib, self.label)
        pin = self.settings.pin()
        login = (pid, self.settings.module, self.label)
        try:
            self._session = token.open(user_pin=pin)
            _LOGINS[login] = _pin_digest(pin)
        except Exception as exc:  # the login state is per process: another session of ours already logged in
            if type(exc).__name__ != "UserAlreadyLoggedIn":
                raise
            # The token does not check a PIN again once the process is logged in: a second configuration
            # with a wrong PIN would go unnoticed until a restart. Compare with the PIN this process used.
            logged_in_with = _LOGINS.get(login)
            if logged_in_with is not None and not hmac.compare_digest(logged_in_with, _pin_digest(pin)):
                raise AccessDeniedError(
                    f"PKCS#11 login to token {self.label!r}: this process is logged in to it with another PIN "
                    "(check this configuration's PIN)"
                ) from None
            self._session = token.open()
        self._pid = pid
        return self._session


# (pid, module, token label) -> keyed digest of the PIN this process logged in with (never the PIN itself).
_LOGINS: dict[tuple[int, str, str], bytes] = {}
_PIN_DIGEST_KEY = secrets.token_bytes(32)


def _pin_digest(pin: str) -> bytes:
    return hmac.digest(_PIN_DIGEST_KEY, pin.encode(), "sha256")


_LIBRARIES: dict[str, tuple[int, Any]] = {}


def _library(module: str, forked: bool) -> Any:
    """The loaded PKCS#11 module, re-initialised in a child process (C_Initialize is per process)."""
    try:
        import pkcs11
    except ImportError:
        raise ConfigError(
            "the pkcs11 key provider needs the `pkcs11` extra: pip install 'fieldcrypt[pkcs11]'"
        ) from None
    pid = os.getpid()
    loaded = _LIBRARIES.get(module)
    if loaded is not None and loaded[0] == pid and not forked:
        return loaded[1]
    if not Path(module).is_file():
        raise ConfigError(f"PKCS#11 module {module} does not exist")
    try:
        lib = pkcs11.lib(module)
        if loaded is not None and loaded[0] != pid:
            lib.reinitialize()
    except pkcs11.exceptions.PKCS11Error as exc:
        raise KeyProviderError(f"PKCS#11 module {module} failed to initialise ({type(exc).__name__})") from None
    _LIBRARIES[module] = (pid, lib)
    return lib


def _find_token(lib: Any, label: str) -> Any:
    """The token with `label`; a slot whose token cannot be described (removed mid-process) is passed over."""
    import pkcs11.exceptions as p11e

    found = []
    for slot in lib.get_slots(token_present=True):
        try:
            token = slot.get_token()
        except p11e.PKCS11Error:
            continue
        if token.label == label:
            found.append(token)
    if not found:
        raise p11e.NoSuchToken()
    if len(found) > 1:
        raise p11e.MultipleTokensReturned()
    return found[0]


class Pkcs11Provider(KeyProvider):
    provider_id = PROVIDER_ID

    def __init__(self, token: Pkcs11Token, key_label: str, also_decrypt: Iterable[str] = ()) -> None:
        """`key_label` wraps new data keys; `also_decrypt` labels (an old key mid-rotation) only unwrap."""
        self._token = token
        self._label = key_label
        self._decrypt_labels = {key_label, *also_decrypt}
        for label in sorted(self._decrypt_labels):
            self.validate(label)

    def __repr__(self) -> str:
        return f"Pkcs11Provider(token={self._token.label!r}, key={self._label!r})"

    def describe(self) -> MasterKeyInfo:
        return MasterKeyInfo(PROVIDER_ID, self._label, "")

    def validate(self, label: str) -> None:
        """Refuse a key that is not an AES-256, sensitive, non-extractable encrypt/decrypt key, naming why."""
        from pkcs11 import Attribute, KeyType

        def check(session: Any) -> None:
            key = _key(session, label)
            required: list[tuple[str, Any, Any]] = [
                ("CKA_KEY_TYPE", Attribute.KEY_TYPE, KeyType.AES),
                ("CKA_VALUE_LEN", Attribute.VALUE_LEN, KEY_BITS // 8),
                ("CKA_SENSITIVE", Attribute.SENSITIVE, True),
                ("CKA_EXTRACTABLE", Attribute.EXTRACTABLE, False),
                ("CKA_ENCRYPT", Attribute.ENCRYPT, True),
                ("CKA_DECRYPT", Attribute.DECRYPT, True),
            ]
            for name, attribute, wanted in required:
                actual = key[attribute]
                if actual != wanted:
                    shown = getattr(actual, "name", actual)
                    raise KeyProviderError(
                        f"PKCS#11 key {label!r} on token {self._token.label!r} is refused: {name} is {shown}, "
                        f"must be {getattr(wanted, 'name', wanted)}"
                    )

        self._token.call("validate", label, check)

    def check_value(self, label: str | None = None) -> str:
        """The key check value: hex of the GMAC tag of KCV_LABEL under KCV_NONCE, computed in the token."""
        label = label or self._label
        tag: bytes = self._token.call(
            "check value", label, lambda s: _gcm(s, label, "encrypt", KCV_NONCE, b"", KCV_LABEL)
        )
        return tag[:KCV_SIZE].hex()

    def generate_data_key(self, context: EncryptionContext) -> tuple[bytes, WrappedKey]:
        dek = os.urandom(DEK_SIZE)
        return dek, self._wrap(dek, context)

    def unwrap(self, wrapped: WrappedKey, context: EncryptionContext) -> bytes:
        if wrapped.provider != PROVIDER_ID or wrapped.key_id not in self._decrypt_labels:
            raise KeyProviderError(
                f"data key is wrapped by {wrapped.provider} master key {wrapped.master_key_ref}, which is not a "
                f"master key of this workspace (current: pkcs11 key {self._label!r} on token {self._token.label!r})"
            )
        body = wrapped.wrapped
        if len(body) != _WRAPPED_SIZE:
            raise IntegrityError(f"pkcs11 wrapped key is {len(body)} bytes, expected {_WRAPPED_SIZE}")
        ad = wrap_ad(self._token.label, wrapped.key_id, context)
        dek: bytes = self._token.call(
            "unwrap",
            wrapped.key_id,
            lambda s: _gcm(s, wrapped.key_id, "decrypt", body[:NONCE_SIZE], body[NONCE_SIZE:], ad),
        )
        if len(dek) != DEK_SIZE:
            raise IntegrityError(f"pkcs11 unwrapped a {len(dek)}-byte data key, expected {DEK_SIZE}")
        return dek

    def rewrap(self, wrapped: WrappedKey, context: EncryptionContext) -> WrappedKey:
        return self._wrap(self.unwrap(wrapped, context), context)

    def wrap(self, dek: bytes, context: EncryptionContext) -> WrappedKey:
        """Wrap an existing data key under the current key (a rotation from another provider)."""
        return self._wrap(dek, context)

    def _wrap(self, dek: bytes, context: EncryptionContext) -> WrappedKey:
        nonce = os.urandom(NONCE_SIZE)
        while nonce == KCV_NONCE:  # reserved for the key check value
            nonce = os.urandom(NONCE_SIZE)
        ad = wrap_ad(self._token.label, self._label, context)
        sealed: bytes = self._token.call("wrap", self._label, lambda s: _gcm(s, self._label, "encrypt", nonce, dek, ad))
        return WrappedKey(PROVIDER_ID, self._label, "", nonce + sealed)


class MigratingProvider(KeyProvider):
    """Mid-rotation from another provider (local) to a pkcs11 key: unwraps either, wraps under pkcs11 only."""

    provider_id = PROVIDER_ID

    def __init__(self, current: Pkcs11Provider, old: KeyProvider) -> None:
        self.current = current
        self.old = old

    def __repr__(self) -> str:
        return f"MigratingProvider({self.current!r}, from={self.old!r})"

    def describe(self) -> MasterKeyInfo:
        return self.current.describe()

    def generate_data_key(self, context: EncryptionContext) -> tuple[bytes, WrappedKey]:
        return self.current.generate_data_key(context)

    def unwrap(self, wrapped: WrappedKey, context: EncryptionContext) -> bytes:
        if wrapped.provider == self.old.provider_id:
            return self.old.unwrap(wrapped, context)
        return self.current.unwrap(wrapped, context)

    def rewrap(self, wrapped: WrappedKey, context: EncryptionContext) -> WrappedKey:
        return self.current.wrap(self.unwrap(wrapped, context), context)


def wrap_ad(token_label: str, key_label: str, context: EncryptionContext) -> bytes:
    """GCM associated data of a pkcs11-wrapped data key (docs/FORMAT.md, "pkcs11 key wrapping")."""
    token, key = token_label.encode(), key_label.encode()
    return b"\x02" + struct.pack(">H", len(token)) + token + struct.pack(">H", len(key)) + key + context.canonical()


def _key(session: Any, label: str) -> Any:
    from pkcs11 import ObjectClass

    return session.get_key(object_class=ObjectClass.SECRET_KEY, label=label)


def _gcm(session: Any, label: str, direction: str, nonce: bytes, data: bytes, ad: bytes) -> bytes:
    from pkcs11 import Mechanism
    from pkcs11.mechanisms import GCMParams

    key = _key(session, label)
    params = GCMParams(nonce, ad, TAG_BITS)
    out: bytes = getattr(key, direction)(data, mechanism=Mechanism.AES_GCM, mechanism_param=params)
    return out
