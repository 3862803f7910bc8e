"""Engine snapshots: ``Engine.state_dict()`` in one checksummed file per covered seq, written atomically.

File layout: ``MAGIC | seq (u64 LE) | body length (u64 LE) | sha256(body) | body`` where the body is a
pickle (protocol 5) of the state, its state hash and the sha256 of the log record at ``seq`` (which
ties the snapshot to one log's history). Loading unpickles with an allowlist of numpy constructors
only, after the checksum matched. Any snapshot that fails a check is skipped, never trusted.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fluidmargin.core.errors import FluidMarginError
from fluidmargin.engine.engine import Engine

MAGIC = b"FMSNAP01"
_HEADER = struct.Struct("<8sQQ32s")
_NAME = re.compile(r"^snap-(\d{20})\.fmsnap$")
_ALLOWED = {
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "_reconstruct"),
}

if TYPE_CHECKING:
    from fluidmargin.store.backend import LogBackend


class SnapshotError(FluidMarginError):
    """A snapshot file that cannot be used (truncated, corrupt, foreign to this log)."""


@dataclass(frozen=True, slots=True)
class Restored:
    engine: Engine
    seq: int
    path: Path


def snapshot_name(seq: int) -> str:
    return f"snap-{seq:020d}.fmsnap"


def list_snapshots(snapshot_dir: str | Path) -> list[tuple[int, Path]]:
    """``(seq, path)`` of every snapshot file in the directory, newest first."""
    d = Path(snapshot_dir)
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        m = _NAME.match(p.name)
        if m:
            out.append((int(m.group(1)), p))
    out.sort(reverse=True)
    return out


def _payload_sha(log: LogBackend, seq: int) -> str:
    if seq == 0:
        return ""
    payload = log.payload_at(seq)
    return "" if payload is None else hashlib.sha256(payload).hexdigest()


def write_snapshot(snapshot_dir: str | Path, engine: Engine, log: LogBackend, keep: int = 3) -> Path:
    """Write the engine's state (which must cover exactly the log's committed records) atomically.

    Temp file in the same directory, fsync, ``os.replace``, fsync the directory; then keep only the
    newest ``keep`` snapshots.
    """
    d = Path(snapshot_dir)
    d.mkdir(parents=True, exist_ok=True)
    seq = engine.seq
    if seq != log.last_seq():
        raise SnapshotError(f"engine at seq {seq} but the log ends at {log.last_seq()}: flush first")
    body = pickle.dumps(
        {"state": engine.state_dict(), "state_hash": engine.state_hash(), "record_sha": _payload_sha(log, seq)},
        protocol=5,
    )
    data = _HEADER.pack(MAGIC, seq, len(body), hashlib.sha256(body).digest()) + body
    final = d / snapshot_name(seq)
    for stale in d.glob(".snap-*.tmp"):
        stale.unlink(missing_ok=True)  # left by a crash mid-write
    tmp = d / f".{final.name}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    for _seq, old in list_snapshots(d)[max(keep, 1) :]:
        old.unlink(missing_ok=True)
    return final


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise SnapshotError(f"snapshot references {module}.{name}, which is not allowed")
        return super().find_class(module, name)


def load_snapshot(path: str | Path, log: LogBackend, screen: str = "incremental") -> Restored:
    """Load and check one snapshot against ``log``; any problem is a SnapshotError naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SnapshotError(f"{path}: {e}") from None
    if len(data) < _HEADER.size:
        raise SnapshotError(f"{path}: truncated header")
    magic, seq, length, digest = _HEADER.unpack_from(data)
    body = data[_HEADER.size :]
    if magic != MAGIC:
        raise SnapshotError(f"{path}: not a fluidmargin snapshot")
    m = _NAME.match(path.name)
    if m and int(m.group(1)) != seq:
        raise SnapshotError(f"{path}: file name says seq {int(m.group(1))}, header says {seq}")
    if len(body) != length:
        raise SnapshotError(f"{path}: body is {len(body)} bytes, header says {length} (truncated?)")
    if hashlib.sha256(body).digest() != digest:
        raise SnapshotError(f"{path}: checksum mismatch")
    try:
        obj = _Unpickler(io.BytesIO(body)).load()
        state, want_hash, record_sha = obj["state"], obj["state_hash"], obj["record_sha"]
    except SnapshotError:
        raise
    except Exception as e:  # a checksummed body that still fails to decode: written by something else
        raise SnapshotError(f"{path}: cannot decode: {type(e).__name__}: {e}") from None
    if state.get("seq") != seq:
        raise SnapshotError(f"{path}: state is at seq {state.get('seq')}, header says {seq}")
    if seq > log.last_seq():
        raise SnapshotError(f"{path}: covers seq {seq} but the log ends at {log.last_seq()}")
    if state.get("config") != log.config.to_dict():
        raise SnapshotError(f"{path}: written for a different engine config")
    if record_sha != _payload_sha(log, seq):
        raise SnapshotError(f"{path}: does not match the log's record at seq {seq} (another log's snapshot?)")
    try:
        engine = Engine.from_state(state, screen=screen)
    except Exception as e:
        raise SnapshotError(f"{path}: cannot restore the engine: {type(e).__name__}: {e}") from None
    got = engine.state_hash()
    if got != want_hash:
        raise SnapshotError(f"{path}: restored state hash {got} differs from the stored {want_hash}")
    return Restored(engine, seq, path)


def load_latest(
    snapshot_dir: str | Path | None, log: LogBackend, screen: str = "incremental"
) -> tuple[Restored | None, list[str]]:
    """The newest snapshot that loads and checks out, and the reasons the newer ones were skipped."""
    skipped: list[str] = []
    if snapshot_dir is None:
        return None, skipped
    for _seq, path in list_snapshots(snapshot_dir):
        try:
            return load_snapshot(path, log, screen), skipped
        except SnapshotError as e:
            skipped.append(str(e))
    return None, skipped
