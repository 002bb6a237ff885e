"""Policy: which attributes of which dataset are protected, since when, with which mask.

Stored in the lake at `_fieldcrypt/policy.json` so every run and reader sees the same.
Enabling is irreversible: a policy that drops or alters an enabled attribute is
refused when it is saved, and when it is loaded against what the lake holds. The stored
policy is authenticated under the master-key hierarchy (fieldcrypt.keys.policy_auth).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from fieldcrypt.errors import ConcurrentUpdateError, PolicyError
from fieldcrypt.format.attribute_path import AttributePath
from fieldcrypt.format.padding import check_pad_to
from fieldcrypt.keys import policy_auth
from fieldcrypt.keys.binding import BINDING_PATH, BindingStore
from fieldcrypt.keys.policy_auth import MacKey, PolicyKeys
from fieldcrypt.lake.store import LakeStore
from fieldcrypt.policy.rollback import RollbackError, SeenVersions, check_policy

POLICY_PATH = "_fieldcrypt/policy.json"
POLICY_FORMAT = "fieldcrypt-policy-v1"
MASKS = ("full", "email", "last4")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class DatasetSpec:
    """How to read a dataset: its ingestion-time column and its primary key.

    `primary_key` is the tuple of key columns: empty for no primary key, one column for a
    single key, several for a composite key (canonical row-key bytes: docs/FORMAT.md,
    section 3). A plain string or None is accepted and normalised, so a single key can
    still be written `primary_key="user_id"`.
    """

    name: str
    ingested_at: str
    primary_key: tuple[str, ...] = ()

    def __init__(self, name: str, ingested_at: str, primary_key: str | Sequence[str] | None = ()) -> None:
        if primary_key is None:
            columns: tuple[str, ...] = ()
        elif isinstance(primary_key, str):
            columns = (primary_key,) if primary_key else ()
        else:
            columns = tuple(primary_key)
        if not all(isinstance(c, str) and c for c in columns) or len(set(columns)) != len(columns):
            raise PolicyError(f"primary key of dataset {name!r} must be distinct non-empty column names")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "ingested_at", ingested_at)
        object.__setattr__(self, "primary_key", columns)

    def to_json_dict(self) -> dict[str, object]:
        """Policy form: a single key as a plain string (as before composite keys), several as a list, none as null."""
        key: str | list[str] | None = list(self.primary_key) if len(self.primary_key) > 1 else None
        if len(self.primary_key) == 1:
            key = self.primary_key[0]
        return {"name": self.name, "ingested_at": self.ingested_at, "primary_key": key}


@dataclass(frozen=True)
class AttributePolicy:
    """One protected attribute: `path` is a column or a dot path into struct columns."""

    dataset: str
    path: str
    mask: str
    enabled_at: datetime
    enabled_by: str
    blind_index: bool = False
    pad_to: int = 0  # cells padded to a multiple of this many bytes (cell format 2); 0: not padded
    normalize: str = "none"  # blind-index value normalisation (fieldcrypt.keys.blind_index.NORMALIZATIONS)
    # Opt-in, irreversible: rows ingested before `enabled_at` are encrypted too (`Workspace.encrypt_history`).
    encrypt_history: bool = False

    @property
    def name(self) -> str:
        return f"{self.dataset}.{self.path}"

    @property
    def parsed_path(self) -> AttributePath:
        return AttributePath.parse(self.path)

    @property
    def column(self) -> str:
        """The top-level column holding the attribute."""
        return self.parsed_path.column

    @property
    def column_stem(self) -> str:
        return self.parsed_path.stem

    @property
    def ciphertext_column(self) -> str:
        return f"{self.column_stem}__fc_ct"

    @property
    def wrapped_key_column(self) -> str:
        return f"{self.column_stem}__fc_dek"

    @property
    def blind_index_column(self) -> str | None:
        return f"{self.column_stem}__fc_bidx" if self.blind_index else None


@dataclass(frozen=True)
class Policy:
    workspace: str
    datasets: dict[str, DatasetSpec] = field(default_factory=dict)
    attributes: dict[str, AttributePolicy] = field(default_factory=dict)
    # Raised by one at every save (fieldcrypt.policy.rollback): not content, so two policies enabling the same
    # attributes are equal whatever their versions. 0: never saved by a fieldcrypt that counts versions.
    version: int = field(default=0, compare=False)

    def for_dataset(self, dataset: str) -> list[AttributePolicy]:
        return [a for a in self.attributes.values() if a.dataset == dataset]

    def dataset(self, name: str) -> DatasetSpec:
        try:
            return self.datasets[name]
        except KeyError:
            raise PolicyError(
                f"dataset {name!r} is not declared in the policy of workspace {self.workspace!r}"
            ) from None

    def with_dataset(self, spec: DatasetSpec) -> Policy:
        _check_name(spec.name, "dataset")
        existing = self.datasets.get(spec.name)
        if existing is not None and existing != spec and self.for_dataset(spec.name):
            raise PolicyError(
                f"dataset {spec.name!r} already has protected attributes; its ingestion column and primary key "
                f"({existing.ingested_at}, {existing.primary_key}) cannot change"
            )
        return replace(self, datasets={**self.datasets, spec.name: spec})

    def with_enabled(
        self,
        attribute: str,
        mask: str,
        enabled_by: str,
        now: datetime | None = None,
        blind_index: bool = False,
        pad_to: int = 0,
        normalize: str = "none",
    ) -> Policy:
        """A policy with `dataset.path` enabled from now on; enabling twice is refused."""
        _check_normalization(attribute, normalize, blind_index)
        dataset, _, path = attribute.partition(".")
        if not path:
            raise PolicyError(f"attribute {attribute!r} must be written dataset.column or dataset.struct.field")
        column = AttributePath.parse(path).column
        spec = self.dataset(dataset)
        if column in (spec.ingested_at, *spec.primary_key):
            raise PolicyError(
                f"{attribute} is the ingestion-time or primary-key column of {dataset}; it cannot be encrypted"
            )
        if mask not in MASKS:
            raise PolicyError(f"mask {mask!r} for {attribute} is not one of {', '.join(MASKS)}")
        if attribute in self.attributes:
            since = self.attributes[attribute].enabled_at.isoformat()
            raise PolicyError(
                f"{attribute} is already enabled (since {since}); enabling is irreversible and happens once"
            )
        enabled_at = (now or datetime.now(UTC)).astimezone(UTC)
        pad_to = check_pad_to(pad_to, attribute)
        entry = AttributePolicy(dataset, path, mask, enabled_at, enabled_by, blind_index, pad_to, normalize)
        for other in self.for_dataset(dataset):
            if other.column_stem == entry.column_stem:
                raise PolicyError(f"{attribute} would share its ciphertext columns with {other.name}")
        return replace(self, attributes={**self.attributes, attribute: entry})

    def with_history_encrypted(self, attribute: str) -> Policy:
        """A policy where every row of `attribute`, whenever ingested, is to be encrypted (once; irreversible)."""
        entry = self.attributes.get(attribute)
        if entry is None:
            raise PolicyError(f"{attribute} is not enabled; enable it before encrypting its history")
        if entry.encrypt_history:
            raise PolicyError(f"the history of {attribute} is already being encrypted; run protect over its partitions")
        return replace(self, attributes={**self.attributes, attribute: replace(entry, encrypt_history=True)})

    def check_successor(self, new: Policy) -> None:
        """Refuse a policy that would undo anything this one enabled."""
        if new.workspace != self.workspace:
            raise PolicyError(f"policy belongs to workspace {self.workspace!r}, not {new.workspace!r}")
        for name, entry in self.attributes.items():
            after = new.attributes.get(name)
            if after is None:
                raise PolicyError(f"policy drops enabled attribute {name}; enabling is irreversible")
            if entry.encrypt_history and not after.encrypt_history:
                raise PolicyError(f"policy stops encrypting the history of {name}; that is irreversible")
            if replace(after, encrypt_history=entry.encrypt_history) != entry:
                raise PolicyError(
                    f"policy changes enabled attribute {name} (mask or enablement time); that is not allowed"
                )
            if new.datasets.get(entry.dataset) != self.datasets.get(entry.dataset):
                raise PolicyError(f"policy changes dataset {entry.dataset}, which has enabled attributes")

    # -- (de)serialisation -----------------------------------------------------------------

    def to_json(self) -> str:
        doc = {
            "format": POLICY_FORMAT,
            **({"version": self.version} if self.version else {}),  # absent: 0 (policies written before)
            "workspace": self.workspace,
            "datasets": {n: s.to_json_dict() for n, s in sorted(self.datasets.items())},
            "attributes": {
                n: {
                    "mask": a.mask,
                    "enabled_at": _iso(a.enabled_at),
                    "enabled_by": a.enabled_by,
                    "blind_index": a.blind_index,
                    **({"pad_to": a.pad_to} if a.pad_to else {}),  # absent: not padded (policies written before)
                    **({"normalize": a.normalize} if a.normalize != "none" else {}),  # absent: none (same reason)
                    **({"encrypt_history": True} if a.encrypt_history else {}),  # absent: false (same reason)
                }
                for n, a in sorted(self.attributes.items())
            },
        }
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> Policy:
        try:
            doc = json.loads(text)
            if doc.get("format") != POLICY_FORMAT:
                raise PolicyError(f"{where}: unknown policy format {doc.get('format')!r}")
            datasets = {n: DatasetSpec(**s) for n, s in doc["datasets"].items()}
            attributes = {}
            for name, a in doc["attributes"].items():
                dataset, _, path = name.partition(".")
                enabled_at = datetime.fromisoformat(a["enabled_at"].replace("Z", "+00:00"))
                blind_index, normalize = bool(a.get("blind_index", False)), str(a.get("normalize", "none"))
                _check_normalization(name, normalize, blind_index, where)
                attributes[name] = AttributePolicy(
                    dataset,
                    path,
                    a["mask"],
                    enabled_at,
                    a["enabled_by"],
                    blind_index,
                    check_pad_to(int(a.get("pad_to", 0)), name),
                    normalize,
                    a.get("encrypt_history", False) is True,
                )
            version = doc.get("version", 0)
            if type(version) is not int or version < 0:
                raise ValueError("version")
            return cls(doc["workspace"], datasets, attributes, version)
        except (ValueError, KeyError, TypeError) as exc:
            raise PolicyError(f"{where} is not a valid fieldcrypt policy ({type(exc).__name__})") from None


def _check_normalization(attribute: str, how: str, blind_index: bool, where: str = "") -> None:
    from fieldcrypt.keys.blind_index import NORMALIZATIONS

    at = f"{where}: " if where else ""
    if how not in NORMALIZATIONS:
        raise PolicyError(f"{at}normalisation {how!r} of {attribute} is not one of {', '.join(NORMALIZATIONS)}")
    if how != "none" and not blind_index:
        raise PolicyError(f"{at}normalisation {how!r} of {attribute} applies to a blind index; enable one with it")


class PolicyStore:
    """The policy of one workspace, in its lake, authenticated under the master-key hierarchy.

    Loading an existing policy verifies its MAC, which needs the MAC key unwrapped once
    per cache lifetime (one KMS call on aws-kms): `keys` returns the workspace's data-key
    cache and is only called when a stored policy is read or written. See
    fieldcrypt.keys.policy_auth and docs/FORMAT.md section 6a.
    """

    def __init__(self, store: LakeStore, workspace: str, keys: Callable[[], PolicyKeys] | None = None) -> None:
        self.store = store
        self.workspace = workspace
        self._keys = keys

    def exists(self) -> bool:
        return self.store.exists(POLICY_PATH)

    def load(self) -> Policy:
        where = self.store.display(POLICY_PATH)
        if not self.store.exists(POLICY_PATH):
            if self.store.exists(BINDING_PATH):
                raise PolicyError(
                    f"{where} is missing but the lake is bound to a master key ({self.store.display(BINDING_PATH)}); "
                    "a deleted policy is refused, never read as 'nothing enabled': restore it from backup"
                )
            return Policy(self.workspace)
        for attempt in range(3):  # another worker's save between reading the policy and the binding's record
            try:
                return self._verified(self.store.read_bytes(POLICY_PATH))
            except ConcurrentUpdateError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _verified(self, raw: bytes, accept_older: bool = False) -> Policy:
        """The policy in stored bytes, after its workspace, MAC and version (unless `accept_older`) are checked."""
        where = self.store.display(POLICY_PATH)
        doc, auth = policy_auth.split(raw, where)
        self._check_workspace(doc, where)
        sealed = policy_auth.sealed(doc, auth, where)
        policy = Policy.from_json(sealed.document, where)
        covered, label = sealed.covered(policy.to_json())
        key = self._require_keys(where).policy_key_for(sealed.mac_key)
        if not key.verify(covered, sealed.mac, label):
            raise PolicyError(
                f"{where} failed authentication: it was edited outside fieldcrypt (or replaced); it is refused. "
                "Restore it from backup"
            )
        if not accept_older:
            try:
                check_policy(self.seen(key), policy.version, sealed.mac, where)
            except RollbackError:
                # Read before another worker's save and its record: that is a race, not a restore.
                now = self.store.read_versioned(POLICY_PATH)
                if now is not None and now[0] != raw:
                    raise ConcurrentUpdateError(f"{where} changed while it was being read; run again") from None
                raise
        return policy

    def seen(self, key: MacKey) -> SeenVersions | None:
        """The binding's record of the newest policy version (None: none recorded yet), MAC checked."""
        binding = BindingStore(self.store).load()
        if binding is None or binding.seen is None:
            return None
        return SeenVersions.opened(binding.seen, key, self.store.display(BINDING_PATH))

    def load_restored(self) -> Policy:
        """The stored policy, authenticated, even if older than the lake has seen (for `restore-accept`)."""
        if not self.store.exists(POLICY_PATH):
            raise PolicyError(f"{self.store.display(POLICY_PATH)} is missing: there is no restored policy to accept")
        return self._verified(self.store.read_bytes(POLICY_PATH), accept_older=True)

    def accept_restored(self, policy: Policy) -> int:
        """Store the restored `policy` as a new version above every one the lake has seen; returns it.

        The binding's record moves to it, so every older copy stays refused.
        """
        where = self.store.display(POLICY_PATH)
        keys = self._require_keys(where)
        wrapped = self.mac_key_value()
        seen = None if wrapped is None else self.seen(keys.policy_key_for(wrapped))
        version = max(policy.version, seen.policy_version if seen else 0)

        def change(stored: bytes | None) -> bytes:
            now = self._verified(stored, accept_older=True) if stored is not None else None
            if now is None or now != policy:
                raise ConcurrentUpdateError(f"{where} changed while its restore was being accepted; run again")
            return self._sealed(replace(policy, version=max(version, now.version) + 1), stored)

        self.store.update(POLICY_PATH, change, "its restore was being accepted")
        self._record_seen()
        return self.load().version

    def _record_seen(self, replace_unreadable: bool = False) -> None:
        """Move the binding's record forward to the stored policy (never back; a no-op when it is there).

        After the policy write: a crash in between leaves a policy newer than the record, which is
        accepted (and recorded by the next save), never the other way round. `replace_unreadable`:
        a record that does not authenticate under the stored policy's MAC key is replaced (adoption
        of a policy under a new MAC key, audited by its caller).
        """
        stored = self.store.read_bytes(POLICY_PATH)
        where = self.store.display(POLICY_PATH)
        doc, auth = policy_auth.split(stored, where)
        sealed = policy_auth.sealed(doc, auth, where)
        version = Policy.from_json(sealed.document, where).version
        key = self._require_keys(where).policy_key_for(sealed.mac_key)
        bwhere = self.store.display(BINDING_PATH)

        def change(now: dict[str, object] | None) -> dict[str, object] | None:
            kept: SeenVersions | None = None
            if now is not None:
                try:
                    kept = SeenVersions.opened(now, key, bwhere)
                except PolicyError:
                    if not replace_unreadable:
                        raise
                if kept is not None and kept.policy_version >= version:
                    return None
            if kept is None:
                return SeenVersions(version, sealed.mac).sealed(key)
            # the pinned audit head and erasure indexes are kept
            return replace(kept, policy_version=version, policy_mac=sealed.mac).sealed(key)

        BindingStore(self.store).update_seen(change)

    def pinned_audit_head(self) -> tuple[int, str] | None:
        """The audit head (seq, digest) the binding pins, MAC checked; None when none is pinned."""
        seen = self._stored_seen()
        return (seen.audit_seq, seen.audit_digest) if seen is not None and seen.audit_seq else None

    def pin_audit_head(self, seq: int, digest: str) -> None:
        """Record a verified audit head in the binding (never moving it back); a no-op without a policy."""
        if self._stored_seen() is None:
            return
        stored = self.store.read_bytes(POLICY_PATH)
        where = self.store.display(POLICY_PATH)
        doc, auth = policy_auth.split(stored, where)
        key = self._require_keys(where).policy_key_for(policy_auth.sealed(doc, auth, where).mac_key)
        bwhere = self.store.display(BINDING_PATH)

        def change(now: dict[str, object] | None) -> dict[str, object] | None:
            if now is None:
                return None
            seen = SeenVersions.opened(now, key, bwhere)
            if seen.audit_seq >= seq:
                return None
            return replace(seen, audit_seq=seq, audit_digest=digest).sealed(key)

        BindingStore(self.store).update_seen(change)

    def _stored_seen(self) -> SeenVersions | None:
        if not self.store.exists(POLICY_PATH):
            return None
        stored = self.store.read_bytes(POLICY_PATH)
        where = self.store.display(POLICY_PATH)
        doc, auth = policy_auth.split(stored, where)
        return self.seen(self._require_keys(where).policy_key_for(policy_auth.sealed(doc, auth, where).mac_key))

    def save(self, policy: Policy, previous: Policy | None = None) -> None:
        """Replace the stored policy by its successor `policy` (irreversibility checked).

        With `previous` (the policy `policy` was derived from), a stored policy that is no
        longer `previous` - another worker enabled something since - is a
        ConcurrentUpdateError, not a lost update; the check and the write are one
        compare-and-swap (LakeStore.update).
        """
        self._require_keys(self.store.display(POLICY_PATH))  # binds a new lake first (its first policy), then RMW

        def change(stored: bytes | None) -> bytes | None:
            now = self._verified(stored) if stored is not None else self.load()
            self._check_change(now, policy, previous)
            if stored is not None and now == policy:
                return None  # stored already (another worker saved this very successor): no new version
            return self._sealed(replace(policy, version=now.version + 1), stored)

        self.store.update(POLICY_PATH, change, "this run was updating it")
        self._record_seen()

    def check_change(self, policy: Policy, previous: Policy | None = None) -> None:
        """Refuse now what `save(policy, previous)` would refuse, writing nothing (e.g. before creating a key)."""
        self._check_change(self.load(), policy, previous)

    def _check_change(self, now: Policy, policy: Policy, previous: Policy | None) -> None:
        # Content, not versions: a new lake's first (empty) policy is written, as version 1, after `previous` was read.
        unchanged = previous is None or _content(now) in (_content(previous), _content(policy))
        if not unchanged:
            raise ConcurrentUpdateError(
                f"{self.store.display(POLICY_PATH)} changed while this run was updating it (another worker "
                "changed the policy); nothing was written, run again"
            )
        now.check_successor(policy)

    def write_authenticated(self, policy: Policy) -> None:
        """Write `policy` with its MAC, under the stored MAC key (a new one for the first policy).

        No successor check: `save` is the way to change a policy. This is for adoption of a
        reviewed legacy policy, and tests.
        """
        self._require_keys(self.store.display(POLICY_PATH))  # binds a new lake before the read-modify-write

        def change(stored: bytes | None) -> bytes:
            version = max(policy.version, self._stored_version(stored)) + 1
            return self._sealed(replace(policy, version=version), stored)

        self.store.update(POLICY_PATH, change, "this run was updating it")
        self._record_seen(replace_unreadable=True)

    def _stored_version(self, stored: bytes | None) -> int:
        """The version written in stored policy bytes, authenticated or not (0: none)."""
        if stored is None:
            return 0
        where = self.store.display(POLICY_PATH)
        doc, _ = policy_auth.split(stored, where)
        version = doc.get("version", 0)
        return version if type(version) is int and version > 0 else 0

    def create(self, policy: Policy) -> bool:
        """Write the first policy (with a new MAC key) unless one exists; False if another worker's is there."""
        return self.store.update(
            POLICY_PATH,
            lambda stored: None if stored is not None else self._sealed(replace(policy, version=1), None),
            "it was created",
        )

    def _sealed(self, policy: Policy, stored: bytes | None) -> bytes:
        """`policy` sealed under the MAC key of the `stored` policy bytes (a new key when there are none)."""
        where = self.store.display(POLICY_PATH)
        keys = self._require_keys(where)
        wrapped = None
        if stored is not None:
            doc, auth = policy_auth.split(stored, where)
            wrapped = None if auth is None else policy_auth.sealed(doc, auth, where).mac_key
        if wrapped is None:
            key, wrapped = keys.new_policy_key()
        else:
            key = keys.policy_key_for(wrapped)
        return policy_auth.seal(policy.to_json(), key, wrapped)

    def mac_key_value(self) -> bytes | None:
        """The stored wrapped MAC key, or None when there is no authenticated policy."""
        if not self.store.exists(POLICY_PATH):
            return None
        where = self.store.display(POLICY_PATH)
        doc, auth = policy_auth.split(self.store.read_bytes(POLICY_PATH), where)
        return None if auth is None else policy_auth.sealed(doc, auth, where).mac_key

    def unauthenticated(self) -> Policy | None:
        """A legacy policy without authentication, parsed for review and adoption; None if there is none."""
        if not self.store.exists(POLICY_PATH):
            return None
        where = self.store.display(POLICY_PATH)
        doc, auth = policy_auth.split(self.store.read_bytes(POLICY_PATH), where)
        if auth is not None:
            raise PolicyError(f"{where} is already authenticated; there is nothing to adopt")
        self._check_workspace(doc, where)
        return Policy.from_json(json.dumps(doc), where)

    def rewrap_key(self) -> bool:
        """Rewrap the MAC key under the current master key (rotation); True if it was rewritten."""
        wrapped = self.mac_key_value()
        keys = self._require_keys(self.store.display(POLICY_PATH))
        if wrapped is None or keys.is_current(wrapped):
            return False
        where = self.store.display(POLICY_PATH)

        def change(stored: bytes | None) -> bytes | None:
            if stored is None:
                return None
            self._verified(stored)  # never rewrap the key of a policy that does not authenticate
            doc, auth = policy_auth.split(stored, where)
            now = None if auth is None else policy_auth.sealed(doc, auth, where).mac_key
            if now is None or keys.is_current(now):
                return None
            new = keys.rewrap(now, policy_auth.MAC_KEY_DATASET, policy_auth.MAC_KEY_ATTRIBUTE)
            return policy_auth.reseal_key(stored, new)

        return self.store.update(POLICY_PATH, change, "its MAC key was being rewrapped")

    def _check_workspace(self, doc: dict[str, object], where: str) -> None:
        if doc.get("workspace") != self.workspace:
            raise PolicyError(
                f"lake {self.store.uri} belongs to workspace {doc.get('workspace')!r}, not {self.workspace!r}"
            )

    def _require_keys(self, where: str) -> PolicyKeys:
        if self._keys is None:
            raise PolicyError(f"{where} is authenticated under the master key; open it through a Workspace")
        return self._keys()


def _content(policy: Policy) -> str:
    return replace(policy, version=0).to_json()


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _check_name(name: str, what: str) -> None:
    if not _NAME.fullmatch(name):
        raise PolicyError(f"{what} {name!r} must be letters, digits and underscores, not starting with a digit")
