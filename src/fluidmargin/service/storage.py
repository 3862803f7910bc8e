"""Where the service keeps its state: the one place that opens the durable log.

Today a SQLite path (``Runner.open_or_create``); when the store grows URL support (PostgreSQL),
only :func:`open_runner` and :func:`key_registry_path` change.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson

from fluidmargin.core.errors import ValidationError
from fluidmargin.model.config import EngineConfig
from fluidmargin.sim.venues import perp_venue, waterfall_venue
from fluidmargin.store.runner import Runner

VENUES: dict[str, Callable[[], EngineConfig]] = {"perp": perp_venue, "waterfall": waterfall_venue}
GROUP_SIZE = 1 << 30  # the worker decides when to commit (once per batch), never the runner


def load_config(spec: str) -> EngineConfig:
    """A venue by name (``perp``, ``waterfall``) or an ``EngineConfig.to_dict()`` JSON file."""
    if spec in VENUES:
        return VENUES[spec]()
    path = Path(spec)
    if not path.is_file():
        raise ValidationError(f"--config {spec!r} is neither a venue ({', '.join(VENUES)}) nor a JSON file")
    try:
        return EngineConfig.from_dict(orjson.loads(path.read_bytes()))
    except orjson.JSONDecodeError as e:
        raise ValidationError(f"{path}: not JSON ({e})") from None


def open_runner(db: str | Path, config: EngineConfig | None, snapshot_dir: str | Path | None) -> Runner:
    """Create the log (needs ``config``) or recover it: newest snapshot, then the tail replayed."""
    path = Path(db)
    path.parent.mkdir(parents=True, exist_ok=True)
    if snapshot_dir is not None:
        Path(snapshot_dir).mkdir(parents=True, exist_ok=True)
    return Runner.open_or_create(path, config, snapshot_dir, group_size=GROUP_SIZE)


def key_registry_path(db: str | Path) -> Path:
    """The key registry's own SQLite file, next to the log."""
    p = Path(db)
    return p.with_name(p.name + ".keys.sqlite")


def default_snapshot_dir(db: str | Path) -> Path:
    p = Path(db)
    return p.with_name(p.name + ".snapshots")


def log_config(db: str | Path) -> EngineConfig | None:
    """The config an existing log was created with (None when there is no log yet)."""
    path = Path(db)
    if not path.exists():
        return None
    from fluidmargin.store.log import EventLog

    with EventLog.open(path, readonly=True) as log:
        return log.config
