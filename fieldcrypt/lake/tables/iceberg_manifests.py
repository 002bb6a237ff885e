"""The live entries of Iceberg snapshots, read once per process: a bounded cache keyed by what Iceberg never
rewrites. A manifest list (one per snapshot) and a manifest are immutable files under unique names: a commit
writes new ones and never changes an old one, so what was decoded from a path stays true for that path.

fieldcrypt reads the current snapshot's manifests to take a table's snapshot, to check it is writable and to
plan each commit on the head it reads again; per partition, on the same head, that was the same manifests
decoded several times (pyiceberg decodes each manifest's Avro schema on every read). Here a snapshot's live
entries are decoded once; a new head (another writer's append, fieldcrypt's own previous commit) has a new
manifest list, read again, whose manifests already read come from the cache and whose new ones are read.

Bounded (`MANIFESTS`, the process's cache): at most `MAX_ENTRIES` entries over all cached manifests and
`MAX_SNAPSHOTS` manifest lists, least recently used dropped first. A manifest or manifest list a purge deletes
is forgotten (`forget`). The cached entries are shared: callers must not change them (pyiceberg's commit only
reads the DataFiles it is given).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from pyiceberg.io import FileIO
from pyiceberg.manifest import ManifestEntry, ManifestFile
from pyiceberg.table.snapshots import Snapshot

MAX_ENTRIES = 200_000  # manifest entries (one per data or delete file) kept over all cached manifests
MAX_SNAPSHOTS = 256  # manifest lists (snapshots) whose manifests are kept


class ManifestCache:
    """Live entries by manifest path and manifests by manifest-list path, bounded, least recently used dropped
    first; safe across threads (a run's file workers)."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_snapshots: int = MAX_SNAPSHOTS) -> None:
        self.max_entries = max_entries
        self.max_snapshots = max_snapshots
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[ManifestEntry, ...]] = OrderedDict()  # manifest -> live entries
        self._lists: OrderedDict[str, tuple[ManifestFile, ...]] = OrderedDict()  # manifest list -> manifests
        self._held = 0  # entries held in _entries
        self.reads = 0  # manifests decoded through this cache (what tests and the bench count)

    def live_entries(self, snapshot: Snapshot, io: FileIO) -> list[ManifestEntry]:
        """The snapshot's live entries (added or existing), data and delete files alike, in manifest order."""
        entries: list[ManifestEntry] = []
        for manifest in self.manifests(snapshot, io):
            entries += self.manifest_live_entries(manifest, io)
        return entries

    def manifests(self, snapshot: Snapshot, io: FileIO) -> tuple[ManifestFile, ...]:
        """The manifests the snapshot's manifest list names."""
        key = snapshot.manifest_list
        with self._lock:
            found = self._lists.get(key)
            if found is not None:
                self._lists.move_to_end(key)
                return found
        found = tuple(snapshot.manifests(io))
        with self._lock:
            self._lists[key] = found
            while len(self._lists) > self.max_snapshots:
                self._lists.popitem(last=False)
        return found

    def manifest_live_entries(self, manifest: ManifestFile, io: FileIO) -> tuple[ManifestEntry, ...]:
        """One manifest's live entries, decoded on first use."""
        key = manifest.manifest_path
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found
        found = tuple(manifest.fetch_manifest_entry(io, discard_deleted=True))
        with self._lock:
            self.reads += 1
            if key not in self._entries and len(found) <= self.max_entries:
                self._entries[key] = found
                self._held += len(found)
                while self._held > self.max_entries:
                    _, dropped = self._entries.popitem(last=False)
                    self._held -= len(dropped)
        return found

    def forget(self, path: str) -> None:
        """Drop what is cached of a manifest or manifest list (deleted by a purge)."""
        with self._lock:
            dropped = self._entries.pop(path, None)
            if dropped is not None:
                self._held -= len(dropped)
            self._lists.pop(path, None)

    def clear(self) -> None:
        """Drop everything cached."""
        with self._lock:
            self._entries.clear()
            self._lists.clear()
            self._held = 0

    def __contains__(self, path: object) -> bool:
        """Whether a manifest's entries or a manifest list's manifests are held."""
        with self._lock:
            return path in self._entries or path in self._lists

    def __len__(self) -> int:
        """The manifests whose entries are held."""
        with self._lock:
            return len(self._entries)


MANIFESTS = ManifestCache()  # the process's cache: every IcebergTable reads through it
