"""Audit a log: check the store, replay it from empty (and from its latest snapshot), check outputs and hashes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fluidmargin.engine.engine import Engine
from fluidmargin.store.records import LogCorruptError
from fluidmargin.store.replay import ReplayMismatch, replay
from fluidmargin.store.snapshot import load_latest

if TYPE_CHECKING:
    from fluidmargin.store.backend import LogBackend


def verify_log(
    log: LogBackend, snapshot_dir: str | Path | None = None, expect_hash: str | None = None
) -> dict[str, Any]:
    """A report dict; ``ok`` is true when the store passes its own checks (:meth:`LogBackend.check_store`:
    SQLite's integrity check of the whole file, sanity queries on PostgreSQL), replay reproduced every
    logged record, the state hash at the checkpoint's seq equals the stored checkpoint, the snapshot
    route (if any) agrees, and the final hash equals ``expect_hash`` (if given)."""
    cseq, chash = log.checkpoint()
    report: dict[str, Any] = {
        "events": log.count(),
        "inputs": log.count(inputs_only=True),
        "last_seq": log.last_seq(),
        "state_hash": None,
        "checkpoint_seq": cseq,
        "checkpoint_hash": chash,
        "ok": False,
    }
    errors: list[str] = list(log.check_store())
    try:
        engine = Engine(log.config)
        stats = replay(log, engine, hash_at=[cseq])
        final = engine.state_hash()
        report["state_hash"] = final
        if stats.hashes.get(cseq) != chash:
            errors.append(f"state hash at checkpoint seq {cseq} is {stats.hashes.get(cseq)}, stored {chash}")
        if snapshot_dir is not None:
            restored, skipped = load_latest(snapshot_dir, log)
            report["snapshots_skipped"] = skipped
            report["snapshot_seq"] = restored.seq if restored else None
            if restored is not None:
                replay(log, restored.engine)
                if restored.engine.state_hash() != final:
                    errors.append(f"snapshot {restored.path.name} + tail gives {restored.engine.state_hash()}")
        if expect_hash is not None and expect_hash.lower() != final:
            errors.append(f"state hash {final} is not the expected {expect_hash}")
    except (ReplayMismatch, LogCorruptError) as e:
        errors.append(str(e))
    report["ok"] = not errors
    if errors:
        report["error"] = "; ".join(errors)
    return report
