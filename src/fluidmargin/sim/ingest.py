"""Feed a seeded synthetic input stream through a :class:`Runner`; resumable after a crash.

``python -m fluidmargin.sim.ingest --log PATH --events N --seed S [--group-size G] [--snapshot-every K]``

The stream is a pure function of the seed (it never looks at engine state), so a restarted run skips
the ``inputs_applied`` inputs already in the log and continues. ``ACK <seq>`` is printed (flushed)
after each commit, ``HASH <state hash>`` at the end.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from fluidmargin.core.errors import FluidMarginError, ValidationError
from fluidmargin.core.rng import make_rng
from fluidmargin.core.units import PPM, format_decimal
from fluidmargin.model import events as ev
from fluidmargin.sim.venues import perp_venue
from fluidmargin.store.runner import Runner

T0_NS = 1_700_000_000 * 10**9
START_PRICE_Q = {"BTC": 60_000 * 10**8, "ETH": 3_000 * 10**8}
USD_Q = 10**6
SIZE_SCALE = 10**8  # perp_venue markets use size_decimals 8


def synthetic_stream(seed: int, n_start_accounts: int = 12) -> Iterator[ev.Event]:
    """An endless, deterministic stream of inputs for ``perp_venue()`` (BTC and ETH perps).

    Prices first, then accounts with deposits; then a mix of oracle ticks (random walk), paired
    long/short fills between two accounts at the current price, deposits, new accounts and clock
    ticks. Every input has a unique event id; time strictly increases.
    """
    rng = make_rng(seed)
    price = dict(START_PRICE_Q)
    ts = T0_NS
    i = 0
    accounts: list[int] = []

    def tick() -> int:
        nonlocal ts, i
        ts += int(rng.integers(1, 1500)) * 10**6
        i += 1
        return ts

    def eid() -> str:
        return f"s{seed}-{i}"

    def observe(asset: str) -> ev.PriceObserved:
        step_ppm = int(rng.integers(-6000, 6001))
        price[asset] = max(price[asset] * (PPM + step_ppm) // PPM, 10**8)
        t = tick()
        return ev.PriceObserved(t, "feed", asset, format_decimal(price[asset], 8), event_id=eid())

    def open_account() -> Iterator[ev.Event]:
        aid = 1000 + len(accounts)
        accounts.append(aid)
        t = tick()
        yield ev.AccountOpened(t, aid, event_id=eid())
        t = tick()
        yield ev.Deposited(t, aid, "USD", int(rng.integers(5_000, 100_000)) * USD_Q, event_id=eid())

    yield observe("BTC")
    yield observe("ETH")
    for _ in range(n_start_accounts):
        yield from open_account()
    while True:
        r = int(rng.integers(0, 100))
        if r < 45:
            yield observe("BTC" if rng.integers(0, 2) else "ETH")
        elif r < 85:
            a, b = (accounts[int(x)] for x in rng.choice(len(accounts), size=2, replace=False))
            if a % 2 and not b % 2 and rng.integers(0, 5):
                a, b = b, a  # even ids lean long, odd ids short: positions build up to the margin limit
            asset = "BTC" if rng.integers(0, 3) else "ETH"
            notional_usd = int(rng.integers(1_000, 100_000))
            size = max(notional_usd * SIZE_SCALE * 10**8 // price[asset], 1)
            fee = notional_usd * USD_Q * 2 // 10_000  # 2 bp
            lev = int(rng.choice([10, 20, 50, 50]))
            t = tick()
            yield ev.TradeFilled(t, a, f"{asset}-PERP", size, price[asset], fee, leverage=lev, event_id=eid())
            t = tick()
            yield ev.TradeFilled(t, b, f"{asset}-PERP", -size, price[asset], fee, leverage=lev, event_id=eid())
        elif r < 93:
            aid = accounts[int(rng.integers(0, len(accounts)))]
            t = tick()
            yield ev.Deposited(t, aid, "USD", int(rng.integers(100, 20_000)) * USD_Q, event_id=eid())
        elif r < 95:
            yield from open_account()
        else:
            t = tick()
            yield ev.ClockAdvanced(t, event_id=eid())


def run(
    log: Path,
    events: int,
    seed: int,
    group_size: int = 1000,
    snapshot_every: int = 0,
    snapshot_dir: Path | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> str:
    """Feed inputs ``inputs_applied .. events-1`` of the stream; returns the final state hash.

    ``ACK <seq>`` lines go to ``out`` (stdout by default); a ``RESUME`` line to ``err`` if given.
    """
    out = out or sys.stdout
    runner = Runner.open_or_create(log, config=perp_venue(), snapshot_dir=snapshot_dir, group_size=group_size)
    acked = runner.durable_seq
    if err is not None:
        print(f"RESUME inputs={runner.inputs_applied} seq={acked} snapshot={runner.restored_seq}", file=err, flush=True)

    def ack() -> None:
        nonlocal acked
        if runner.durable_seq != acked:
            acked = runner.durable_seq
            print(f"ACK {acked}", file=out, flush=True)

    try:
        start = runner.inputs_applied
        if start > events:
            raise ValidationError(f"{log} already holds {start} inputs, more than --events {events}")
        for k, event in enumerate(itertools.islice(synthetic_stream(seed), start, events), start=start + 1):
            runner.submit(event)
            if snapshot_every and k % snapshot_every == 0:
                runner.snapshot()
            ack()
        runner.flush()
        ack()
        return runner.engine.state_hash()
    finally:
        runner.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fluidmargin.sim.ingest", description=__doc__.splitlines()[0])
    p.add_argument("--log", required=True, type=Path, help="event log file (created if missing)")
    p.add_argument("--events", required=True, type=int, help="total number of input events in the stream")
    p.add_argument("--seed", required=True, type=int)
    p.add_argument("--group-size", type=int, default=1000, help="records per commit")
    p.add_argument("--snapshot-every", type=int, default=0, help="snapshot every K inputs (0: never)")
    p.add_argument("--snapshots", type=Path, default=None, help="snapshot directory (default: LOG.snapshots)")
    a = p.parse_args(argv)
    if a.events < 0 or a.seed < 0 or a.group_size < 1 or a.snapshot_every < 0:
        p.error("--events, --seed and --snapshot-every must be >= 0 and --group-size >= 1")
    sdir = a.snapshots or (a.log.with_name(a.log.name + ".snapshots") if a.snapshot_every else None)
    try:
        h = run(a.log, a.events, a.seed, a.group_size, a.snapshot_every, sdir, err=sys.stderr)
    except FluidMarginError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"HASH {h}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
