"""prometheus_client's multiprocess files: merged by PID 1 at each scrape,
compacted by the gunicorn master as workers die.

Every gunicorn process writes its metrics into its own memory-mapped files
in PROMETHEUS_MULTIPROC_DIR, named `<type>_<pid>.db` (gauges:
`gauge_<mode>_<pid>.db`). The format is prometheus_client 0.26's
(mmap_dict.py): a native int `used`, 4 bytes of padding, then entries of
(int key length, the key's JSON [metric, sample, labels, help] padded to 8
bytes, double value, double timestamp). It is read here without importing
prometheus_client, which would cost PID 1 about 10 MB of RSS.

Why compaction: the library keeps one file per process forever, so after
thousands of worker restarts (max_requests) every scrape would read
thousands of files. Whenever a worker has died, the master folds the files
of every process that is gone into one archive per file kind
(`counter_archive.db`, ...) and deletes them; values of a `live*` gauge or an
`all` gauge describe a living process and are simply dropped. The fold and
the deletion happen under an exclusive flock on `.lock`; PID 1 reads under a
shared one, so a scrape counts a dead worker exactly once: in its own files
or in the archive, never in both and never in neither. The archives are all
written before any is put in place, so a full disk aborts a compaction whole
(the next one retries) instead of counting some kinds twice.

The directory is the workload's (serve/runtime.py): PID 1 opens it and every
file in it through init/untrusted.py, so a link is never followed, a FIFO or
device never opened, a file never read past MAX_FILE_BYTES. The gunicorn
master's compaction does the same, so a planted FIFO does not hang it either.

A process that finds no room for its file on a full disk (metrics/worker/roomy_mmap.py)
leaves an empty `.no-room-<pid>` here; PID 1 counts them.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import struct
import sys
import time

from ..init import untrusted
from .exposition import Family, counter, gauge

TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import Dict, Iterable, List, Optional, Tuple

    Entry = Tuple[str, float, float]

LOCK_FILE = ".lock"
ARCHIVE = "archive"
NO_ROOM_PREFIX = ".no-room-"
# Far beyond what bounded label values produce; a bigger file is not prometheus_client's.
MAX_FILE_BYTES = 64 << 20
_USED = struct.Struct("i")
_VALUE = struct.Struct("dd")
# Kinds of file whose values outlive their process, and how two of them combine.
_KEEP_WHEN_DEAD = {
    "counter": "sum",
    "histogram": "sum",
    "summary": "sum",
    "gauge_sum": "sum",
    "gauge_min": "min",
    "gauge_max": "max",
    "gauge_mostrecent": "mostrecent",
}
_SHARED_LOCK_WAIT = 0.2  # seconds PID 1 waits for a compaction to finish before reading anyway


# ---- the file format --------------------------------------------------------------

def read_entries(path: str, dir_fd: Optional[int] = None) -> List[Entry]:
    """(key, value, timestamp) of every entry; raises FileNotFoundError when gone and
    untrusted.NotRegularFile for a FIFO, a device, ... (never opened for reading)."""
    fd = untrusted.open_regular(path, dir_fd)
    try:
        head = os.read(fd, 8)
        if len(head) < 8:
            return []
        wanted = min(max(_USED.unpack_from(head, 0)[0], 8), MAX_FILE_BYTES) - 8
        data = head + untrusted.read_up_to(fd, wanted)
    finally:
        os.close(fd)
    return _decode(data)


def _decode(data: bytes) -> List[Entry]:
    if len(data) < 8:
        return []
    used = min(_USED.unpack_from(data, 0)[0], len(data))
    entries = []
    position = 8
    while position + 4 <= used:
        length = _USED.unpack_from(data, position)[0]
        position += 4
        if length <= 0 or position + length > used:
            break  # a worker is appending this entry right now, or the file is damaged
        key = data[position:position + length].decode("utf-8", "replace")
        position += length + (8 - (length + 4) % 8)
        if position + 16 > used:
            break
        value, timestamp = _VALUE.unpack_from(data, position)
        position += 16
        entries.append((key, value, timestamp))
    return entries


def encode_entries(entries: Iterable[Entry]) -> bytes:
    body = []
    used = 8
    for key, value, timestamp in entries:
        encoded = key.encode("utf-8")
        padded = encoded + b" " * (8 - (len(encoded) + 4) % 8)
        record = _USED.pack(len(encoded)) + padded + _VALUE.pack(value, timestamp)
        body.append(record)
        used += len(record)
    return _USED.pack(used) + b"\0\0\0\0" + b"".join(body)


def write_entries(path: str, entries: Iterable[Entry]) -> None:
    """Replace `path` atomically (the temporary name does not end in .db, so no reader lists it)."""
    directory, name = os.path.split(path)
    fd = untrusted.open_directory(directory or ".")
    try:
        untrusted.replace_file(fd, name, encode_entries(entries), 0o600)
    finally:
        os.close(fd)


def parse_name(name: str) -> Optional[Tuple[str, str, str]]:
    """`counter_12.db` -> ("counter", "", "12"); `gauge_livesum_12.db` -> ("gauge", "livesum", "12")."""
    if not name.endswith(".db") or name.startswith("."):
        return None
    parts = name[:-3].split("_")
    if not (parts[-1].isdigit() or parts[-1] == ARCHIVE):
        return None
    if parts[0] == "gauge" and len(parts) == 3:
        return "gauge", parts[1], parts[2]
    if parts[0] in ("counter", "histogram", "summary") and len(parts) == 2:
        return parts[0], "", parts[1]
    return None


def _kind(kind: str, mode: str) -> str:
    return f"gauge_{mode}" if kind == "gauge" else kind


# ---- locking ------------------------------------------------------------------------

class DirectoryLock:
    """flock on the directory's .lock file: shared for readers, exclusive for the compactor.
    `dir_fd` is the directory, opened with untrusted.open_directory."""

    def __init__(self, dir_fd: int, exclusive: bool):
        self.dir_fd = dir_fd
        self.exclusive = exclusive
        self.fd = -1
        self.held = False

    def __enter__(self) -> "DirectoryLock":
        try:
            self.fd = untrusted.open_regular(LOCK_FILE, self.dir_fd)
        except FileNotFoundError:
            if self.exclusive:  # the compactor (the workload's own master) may make it again
                try:
                    os.close(os.open(LOCK_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                     0o600, dir_fd=self.dir_fd))
                    self.fd = untrusted.open_regular(LOCK_FILE, self.dir_fd)
                except OSError:
                    return self
            else:
                return self
        except OSError:
            return self  # a FIFO or a link in its place: go on without the lock rather than hang
        if self.exclusive:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            self.held = True
            return self
        # PID 1 must not hang behind a compactor that was stopped mid-way:
        # compactions take milliseconds, so wait a little, then read anyway.
        deadline = time.monotonic() + _SHARED_LOCK_WAIT
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                self.held = True
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return self
                time.sleep(0.002)

    def __exit__(self, *_exc) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing releases the lock


def prepare(directory: str, owner: Optional[Tuple[int, int]] = None) -> None:
    """A fresh, empty directory for one run (files of an earlier run would add to this one's counts).
    Before the workload runs; `directory`'s parent is out of its reach."""
    untrusted.remove_tree(directory)
    os.mkdir(directory, 0o700)
    lock = os.path.join(directory, LOCK_FILE)
    os.close(os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
    if owner is not None:
        os.chown(directory, *owner, follow_symlinks=False)
        os.chown(lock, *owner, follow_symlinks=False)


# ---- reading and merging (PID 1, at scrape time) ------------------------------------------

_keys: Dict[str, Tuple[str, str, Tuple[Tuple[str, str], ...], str]] = {}


def _parse_key(key: str) -> Tuple[str, str, Tuple[Tuple[str, str], ...], str]:
    parsed = _keys.get(key)
    if parsed is None:
        metric, sample, labels, help_text = json.loads(key)
        # Interned: every series of a metric repeats its name, help text and label names, and
        # the table lives as long as PID 1.
        intern = sys.intern
        parsed = (intern(metric), intern(sample),
                  tuple(sorted((intern(str(k)), intern(str(v))) for k, v in labels.items())), intern(help_text))
        if len(_keys) > 20000:  # label values nobody bounded: do not grow forever
            _keys.clear()
        _keys[key] = parsed
    return parsed


def _combine(how: str, current: Optional[List[float]], value: float, timestamp: float) -> List[float]:
    """[value, timestamp] of `current` (None at first) combined with one more entry."""
    if current is None:
        return [value, timestamp]
    if how == "sum":
        current[0] += value
    elif how == "min":
        current[0] = min(current[0], value)
    elif how == "max":
        current[0] = max(current[0], value)
    elif timestamp > current[1]:  # mostrecent
        current[0], current[1] = value, timestamp
    return current


class _Merged:
    """One metric's samples summed (or min/max/most recent) over every file."""

    __slots__ = ("kind", "mode", "help", "values", "buckets")

    def __init__(self, kind: str, mode: str, help_text: str):
        self.kind = kind
        self.mode = mode
        self.help = help_text
        self.values: Dict[Tuple[str, tuple], List[float]] = {}  # series -> [value, timestamp]
        self.buckets: Dict[tuple, Dict[str, float]] = {}

    def add(self, sample: str, labels: tuple, value: float, timestamp: float, pid: str) -> None:
        if self.kind == "histogram" and sample.endswith("_bucket"):
            le = dict(labels).get("le", "+Inf")
            rest = tuple(item for item in labels if item[0] != "le")
            per_bound = self.buckets.setdefault(rest, {})
            per_bound[le] = per_bound.get(le, 0.0) + value
            return
        mode = self.mode[4:] if self.mode.startswith("live") else self.mode
        if self.kind == "gauge" and mode == "all":
            labels = labels + (("pid", pid),)
        series = (sample, labels)
        # Counters, histograms' sums and summaries add up; a gauge combines by its mode ("all"
        # series are one per pid, so there is nothing to combine).
        how = mode if self.kind == "gauge" else "sum"
        self.values[series] = _combine(how, self.values.get(series), value, timestamp)

    def family(self, metric: str) -> Family:
        name = metric + "_total" if self.kind == "counter" else metric
        family = Family(name, self.kind, self.help)
        for (sample, labels), (value, _) in sorted(self.values.items()):
            if not sample.startswith(name):
                continue  # e.g. a counter's _created, which multiprocess mode does not keep anyway
            family.add_labels(value, labels, sample[len(name):])
        for labels, per_bound in sorted(self.buckets.items()):
            total = 0.0
            for le, count in sorted(per_bound.items(), key=lambda item: float(item[0])):
                total += count
                family.add_labels(total, labels + (("le", le),), "_bucket")
            family.add_labels(total, labels, "_count")
        return family


def _files(names: Iterable[str]) -> List[Tuple[str, Tuple[str, str, str]]]:
    found = []
    for name in names:
        parsed = parse_name(name)
        if parsed is not None:
            found.append((name, parsed))
    found.sort()
    return found


def _open(directory: str) -> int:
    """The directory's fd, or -1 when it is gone (or something else than a directory now)."""
    try:
        return untrusted.open_directory(directory)
    except OSError:
        return -1


def collect_directory(directory: str) -> Tuple[List[Family], int, int]:
    """Every metric in `directory`, merged over processes, the number of files read, and how
    many processes found no room for theirs."""
    merged: Dict[str, _Merged] = {}
    dir_fd = _open(directory)
    if dir_fd < 0:
        return [], 0, 0
    try:
        with DirectoryLock(dir_fd, exclusive=False):
            names = os.listdir(dir_fd)
            files = _files(names)
            for name, (kind, mode, pid) in files:
                if mode.startswith("live") and not _alive(pid):
                    continue  # a dead worker's live gauge, not yet compacted away
                try:
                    entries = read_entries(name, dir_fd)
                except OSError:
                    continue  # a live gauge removed as its worker died; a FIFO nobody should read
                # Merged file by file: PID 1 never holds every file's entries at once (its
                # heap keeps the high-water mark of a scrape for good).
                for key, value, timestamp in entries:
                    metric, sample, labels, help_text = _parse_key(key)
                    target = merged.get(metric)
                    if target is None:
                        target = merged[metric] = _Merged(kind, mode, help_text)
                    target.add(sample, labels, value, timestamp, pid)
                del entries
    finally:
        os.close(dir_fd)
    no_room = sum(1 for name in names if name.startswith(NO_ROOM_PREFIX))
    families = [merged[metric].family(metric) for metric in sorted(merged)]
    return families, len(files), no_room


# ---- compaction (the gunicorn master, after a worker died) -------------------------------

def _alive(pid: str) -> bool:
    return os.path.exists(f"/proc/{pid}")


def compact(directory: str, keep_pids: Iterable[int] = ()) -> int:
    """Fold the files of every process that is gone into the archives; returns how many
    processes were folded. `keep_pids` are alive whatever /proc says (the caller itself).
    Raises OSError (a full disk) with nothing changed."""
    keep = {str(pid) for pid in keep_pids}
    dir_fd = _open(directory)
    if dir_fd < 0:
        return 0
    try:
        with DirectoryLock(dir_fd, exclusive=True):
            return _compact(dir_fd, keep)
    finally:
        os.close(dir_fd)


def _compact(dir_fd: int, keep: set) -> int:
    dead: Dict[str, List[str]] = {}  # file kind -> names
    doomed: List[str] = []
    pids = set()
    for name, (kind, mode, pid) in _files(os.listdir(dir_fd)):
        if pid == ARCHIVE or pid in keep or _alive(pid):
            continue
        pids.add(pid)
        doomed.append(name)
        if _kind(kind, mode) in _KEEP_WHEN_DEAD:
            dead.setdefault(_kind(kind, mode), []).append(name)
    written: List[Tuple[str, str]] = []  # (temporary, archive): renamed only once all are written
    try:
        for file_kind, names in dead.items():
            how = _KEEP_WHEN_DEAD[file_kind]
            archive = f"{file_kind}_{ARCHIVE}.db"
            values: Dict[str, List[float]] = {}
            for name in [archive] + names:
                try:
                    entries = read_entries(name, dir_fd)
                except OSError:
                    continue  # gone, or a FIFO/link planted in its place: nothing to fold
                for key, value, timestamp in entries:
                    if not math.isnan(value):
                        values[key] = _combine(how, values.get(key), value, timestamp)
            temporary = f".{archive}.{os.urandom(6).hex()}.tmp"
            written.append((temporary, archive))
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=dir_fd)
            try:
                data = memoryview(encode_entries((key, v, t) for key, (v, t) in values.items()))
                while data:
                    data = data[os.write(fd, data):]
            finally:
                os.close(fd)
    except OSError:
        for temporary, _ in written:
            untrusted.unlink(temporary, dir_fd)
        raise
    for temporary, archive in written:
        os.replace(temporary, archive, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    for name in doomed:
        untrusted.unlink(name, dir_fd)
    return len(pids)


def collector(directory: str):
    """A collector of everything gunicorn's processes recorded in `directory`."""

    def collect() -> List[Family]:
        families, count, no_room = collect_directory(directory)
        files = gauge("multiprocess_files", "prometheus_client files read for this scrape: the living "
                                            "processes' own and the archives of dead ones.")
        files.add(count)
        dropped = counter("metrics_dropped_processes", "gunicorn processes that could not record some of "
                                                       "their metrics because the metrics directory's "
                                                       "filesystem was full (each logs a warning).")
        dropped.add(no_room)
        return families + [files, dropped]

    return collect
