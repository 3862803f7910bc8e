"""Gap risk per position (risk.gap): P(touch the bankruptcy price within the liquidation horizon) and the
add-on that keeps it under a target, in the risk layer, the engine config, `fluidmargin quote`, the HTTP
account view and `fluidmargin fit-jumps`.

Named fixture: ``Merton_80vol_20jumps_1h``: sigma 80 %/yr, 20 jumps/yr of log size N(-5 %, 8 %), a one-hour
horizon, target 0.01 %. Over an hour lam h = 20/8760 = 0.00228 and a -8.3 % jump is a -0.4 sd jump, so a
long 8 % above its bankruptcy price has P ~ 0.00228 x 0.34 ~ 8e-4: above the target, so it needs an add-on.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from fluidmargin.adapters.quote import quote, quote_line
from fluidmargin.cli.main import app as cli_app
from fluidmargin.core.errors import ValidationError
from fluidmargin.core.units import PRICE_DECIMALS, QUOTE_DECIMALS
from fluidmargin.engine import Engine
from fluidmargin.model.config import EngineConfig, GapRiskConfig, GapRiskSpec
from fluidmargin.risk.stats import gap, jumps
from fluidmargin.service import ServiceSettings, create_app
from fluidmargin.service.schemas import AccountView
from fluidmargin.service.storage import load_config
from fluidmargin.service.testing import ServerThread
from fluidmargin.sim.candles import load_candles
from fluidmargin.sim.venues import waterfall_venue
from support.data import shared_path

H1_YEARS = 3600 / (365 * 86400)
MERTON = jumps.MertonParams(0.0, 0.8, 20.0, -0.05, 0.08)
SPEC = GapRiskSpec(model="merton", sigma="0.8", lam="20", mu_j="-0.05", sigma_j="0.08", horizon_s="3600",
                   target="0.0001")  # fmt: skip
SPEC_WIRE = {"model": "merton", "sigma": "0.8", "lam": "20", "mu_j": "-0.05", "sigma_j": "0.08", "horizon_s": "3600",
             "target": "0.0001"}  # fmt: skip
BTC_SD = 3  # size decimals: 1 BTC = 1000 base quantums
PX = 10**PRICE_DECIMALS
USD = 10**QUOTE_DECIMALS


@pytest.fixture(scope="module")
def table() -> jumps.CrossingTable:
    """The fixture model's table, built here from risk.jumps directly (not through risk.gap's cache)."""
    return jumps.crossing_table(MERTON, H1_YEARS)


def p_direct(table: jumps.CrossingTable, side: int, ratio: float) -> float:
    return float(jumps.crossing_probability(table, np.array([side], dtype=np.int8), np.array([ratio]))[0])


def same_probability(wire: str, p: float) -> bool:
    """A wire probability (12 places, rounded up) is ``p``: at most one unit of the 12th place above it."""
    return Decimal(0) <= Decimal(wire) - Decimal(repr(p)) <= Decimal("1e-12")


# --- risk layer -----------------------------------------------------------------------------------------


def test_probability_matches_jumps_for_the_same_barrier(table: jumps.CrossingTable) -> None:
    # Alice_1BTC_Long_50_000: isolated, 2500 USD margin, bought at 50 000, mark 50 000.
    # fixed = margin - cost = 2500 - 50 000 = -47 500 USD; equity 0 at -fixed / size = 47 500 -> ratio 0.95
    g = gap.position_gap_risk(SPEC, 1000, BTC_SD, 50_000 * PX, (2500 - 50_000) * USD)
    assert g.bankruptcy_price_q == 47_500 * PX
    assert g.probability == pytest.approx(p_direct(table, jumps.LONG, 0.95), rel=1e-12)
    # Bob_2ETH_Short_3000: isolated, 300 USD margin, sold at 3000 (cost -6000), mark 3000.
    # fixed = 300 + 6000 = 6300; equity 0 at 6300 / 2 = 3150 -> ratio 1.05
    g = gap.position_gap_risk(SPEC, -2000, 3, 3000 * PX, (300 + 6000) * USD)
    assert g.bankruptcy_price_q == 3150 * PX
    assert g.probability == pytest.approx(p_direct(table, jumps.SHORT, 1.05), rel=1e-12)


def test_gbm_reproduces_the_published_hit_probability() -> None:
    # GBM, 80 % vol, one day, barrier 10 % below: 0.0125044823 (the issue's acceptance value)
    spec = GapRiskSpec(model="gbm", sigma="0.8", horizon_s="86400", target="0.001")
    g = gap.position_gap_risk(spec, 1000, BTC_SD, 100 * PX, -90 * USD)  # fixed -90 -> bankrupt at 90
    assert g.probability == pytest.approx(0.0125044823, abs=2e-10)


def test_probability_falls_with_distance() -> None:
    # a long of 1 BTC at mark 50 000 with margin m: bankrupt at 50 000 - m; more margin, farther, less likely
    longs = [gap.position_gap_risk(SPEC, 1000, BTC_SD, 50_000 * PX, (m - 50_000) * USD).probability
             for m in range(250, 10_001, 250)]  # fmt: skip
    shorts = [gap.position_gap_risk(SPEC, -1000, BTC_SD, 50_000 * PX, (m + 50_000) * USD).probability
              for m in range(250, 10_001, 250)]  # fmt: skip
    for ps in (longs, shorts):
        assert all(a >= b for a, b in itertools.pairwise(ps))
        assert ps[0] > 100 * ps[-1] > 0.0
    # at or past the barrier: certain; a long without a bankruptcy price (fixed >= 0): never
    assert gap.position_gap_risk(SPEC, 1000, BTC_SD, 50_000 * PX, -50_000 * USD).probability == 1.0
    assert gap.position_gap_risk(SPEC, -1000, BTC_SD, 50_000 * PX, -1 * USD).probability == 1.0
    no_barrier = gap.position_gap_risk(SPEC, 1000, BTC_SD, 50_000 * PX, 0)
    assert (no_barrier.probability, no_barrier.addon_quote_q, no_barrier.bankruptcy_price_q) == (0.0, 0, None)


CASES = [
    # (name, size_base_q, size_decimals, mark in USD, fixed equity in USD)
    ("Alice_1BTC_Long_8pct", 1000, 3, 50_000, 4000 - 50_000),
    ("Bob_1BTC_Short_8pct", -1000, 3, 50_000, 4000 + 50_000),
    ("Carol_2500BTC_Long_3pct", 2_500_000_000_00, 8, 50_000, (1500 - 50_000) * 2500),
    ("Dan_0.015ETH_Short_at_barrier", -15, 3, 2458, 36),
    ("Eve_400kDOGE_Long_1pct", 400_000, 0, 0.1, -0.099 * 400_000),
]


@pytest.mark.parametrize(("name", "size", "sd", "mark", "fixed"), CASES, ids=[c[0] for c in CASES])
def test_addon_brings_the_probability_to_the_target(name: str, size: int, sd: int, mark: float, fixed: float) -> None:
    mark_q = int(Decimal(str(mark)) * PX)
    fixed_q = int(Decimal(str(fixed)) * USD)
    g = gap.position_gap_risk(SPEC, size, sd, mark_q, fixed_q)
    assert g.probability > 1e-4 and g.addon_quote_q > 0, name
    # recompute from scratch with the add-on deposited: the bankruptcy price moves away, P <= target
    after = gap.position_gap_risk(SPEC, size, sd, mark_q, fixed_q + g.addon_quote_q)
    assert after.probability <= 1e-4 and after.addon_quote_q == 0
    # and it is nearly the least that does: two price quantums' worth less leaves P above the target
    two_quanta = math.ceil(Decimal(2 * abs(size)) * 10**QUOTE_DECIMALS / 10 ** (sd + PRICE_DECIMALS))
    short_of = gap.position_gap_risk(SPEC, size, sd, mark_q, fixed_q + g.addon_quote_q - two_quanta - 1)
    assert short_of.probability > 1e-4


def test_batch_equals_one_at_a_time() -> None:
    # 200 positions: the batch takes numba's lookup (>= 64), one at a time the plain-Python twin
    rng = np.random.default_rng(7)
    sizes = [int(s) for s in rng.integers(1, 10_000, 200) * rng.choice([-1, 1], 200)]
    marks = [int(m) for m in rng.integers(1_000, 100_000, 200) * PX]
    # a margin of 1-15 % of notional
    # value in quote quantums = size_q x mark_q x 10^6 / 10^(3 + 8); fixed = margin - value
    values = [s * m // 10**5 for s, m in zip(sizes, marks, strict=True)]
    fixed = [int(abs(v) * f) - v for v, f in zip(values, rng.uniform(0.01, 0.15, 200), strict=True)]
    batch = gap.positions_gap_risk(SPEC, sizes, [BTC_SD] * 200, marks, fixed)
    for i in range(200):
        one = gap.position_gap_risk(SPEC, sizes[i], BTC_SD, marks[i], fixed[i])
        assert batch[i].probability == pytest.approx(one.probability, rel=1e-12, abs=1e-300)
        assert batch[i].addon_quote_q == one.addon_quote_q
        assert batch[i].bankruptcy_price_q == one.bankruptcy_price_q


def test_fitted_default_specs_are_valid_and_cached() -> None:
    for spec in (gap.MERTON_BTC_1H_2018_2026, gap.MERTON_BTC_1M_CRASH_2021_05_19):
        model = gap.gap_model(spec)
        assert gap.gap_model(dataclasses.replace(spec, source="elsewhere")) is model  # one table per model
        assert 0.0 < model.ratio_long < 1.0 < model.ratio_short


def test_probability_format() -> None:
    assert gap.format_probability(1.0) == "1"
    assert gap.format_probability(0.0) == "0"
    assert gap.format_probability(0.0125044823) == "0.0125044823"
    assert gap.format_probability(1.00000000000001e-5) == "0.000010000001"  # 12 places, rounded up


# --- config -------------------------------------------------------------------------------------------


def _venue(gap_risk: GapRiskConfig | None) -> EngineConfig:
    return dataclasses.replace(waterfall_venue(), gap_risk=gap_risk)


def test_config_round_trip_and_old_configs_unchanged() -> None:
    plain = waterfall_venue()
    assert "gap_risk" not in plain.to_dict()  # logs and snapshots of configs without it keep their form
    assert EngineConfig.from_dict(plain.to_dict()).gap_risk is None
    cfg = _venue(GapRiskConfig(default=gap.MERTON_BTC_1H_2018_2026, markets=(("BTC-PERP", SPEC),)))
    d = json.loads(json.dumps(cfg.to_dict()))
    assert EngineConfig.from_dict(d) == cfg and EngineConfig.from_dict(d).to_dict() == cfg.to_dict()
    assert cfg.gap_risk is not None
    assert cfg.gap_risk.spec_for("BTC-PERP") == SPEC
    assert cfg.gap_risk.spec_for("ETH-PERP") == gap.MERTON_BTC_1H_2018_2026
    # hand-written forms: a bare spec (engine-wide), markets as a mapping, JSON numbers
    bare = EngineConfig.from_dict({**plain.to_dict(), "gap_risk": {**SPEC_WIRE, "sigma": 0.8, "lam": 20}})
    assert bare.gap_risk == GapRiskConfig(default=SPEC)
    mapped = EngineConfig.from_dict({**plain.to_dict(), "gap_risk": {"markets": {"BTC-PERP": SPEC_WIRE}}})
    assert mapped.gap_risk == GapRiskConfig(markets=(("BTC-PERP", SPEC),))
    assert mapped.gap_risk.spec_for("ETH-PERP") is None


def test_serve_config_file_carries_gap_risk(tmp_path: Path) -> None:
    path = tmp_path / "venue.json"
    path.write_text(json.dumps({**waterfall_venue().to_dict(), "gap_risk": {"markets": {"BTC-PERP": SPEC_WIRE}}}))
    cfg = load_config(str(path))  # what `fluidmargin serve --config venue.json` reads
    assert cfg.gap_risk == GapRiskConfig(markets=(("BTC-PERP", SPEC),))


BAD_SPECS = [
    # (change to the spec, a fragment the reason must contain)
    ({"sigma": "-0.8"}, "gap_risk.sigma: must be in [0.001, 10]"),
    ({"lam": "200000000"}, "gap_risk.lam: must be in [0, 1e7]"),
    ({"lam": "1000000", "horizon_s": "3600"}, "gap_risk.lam: must be such that lam x horizon <= 20"),
    ({"mu_j": "-2"}, "gap_risk.mu_j: must be in [-1, 1]"),
    ({"sigma": "0"}, "gap_risk.sigma"),
    ({"target": "0"}, "gap_risk.target: must be in (0, 1)"),
    ({"target": "1"}, "gap_risk.target: must be in (0, 1)"),
    ({"target": "1.5"}, "gap_risk.target: must be in (0, 1)"),
    ({"horizon_s": "0"}, "gap_risk.horizon_s: must be in (0, 86400]"),
    ({"horizon_s": "-5"}, "gap_risk.horizon_s"),
    ({"model": "heston"}, "gap_risk.model: 'heston' is not one of merton, kou, gbm"),
    ({"model": "gbm"}, "gap_risk.lam: not a parameter of the gbm model"),
    ({"lam": "-1"}, "gap_risk.lam"),
    ({"sigma_j": "0"}, "gap_risk.sigma_j"),
    ({"sigma": "1e-3"}, "not a plain decimal string"),
    ({"sigma": "abc"}, "not a plain decimal string"),
    ({"sigma": float("nan")}, "not a finite number"),
    ({"sigma": True}, "expected a number or a decimal string"),
    ({"vol": "0.8"}, "unknown field 'vol'"),
]


@pytest.mark.parametrize(("change", "reason"), BAD_SPECS, ids=[r for _, r in BAD_SPECS])
def test_bad_specs_are_refused_with_a_reason(change: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValidationError, match=reason.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        GapRiskSpec.from_dict({**SPEC_WIRE, **change})
    with pytest.raises(ValidationError, match="gap_risk"):
        EngineConfig.from_dict({**waterfall_venue().to_dict(), "gap_risk": {**SPEC_WIRE, **change}})
    out = quote_line(json.dumps({**QUOTE_LINE, "gap_risk": {**SPEC_WIRE, **change}}))  # NaN: written as NaN
    assert out is not None and reason.split(":")[0] in out["error"]


def test_config_refuses_unknown_market_and_empty_gap_risk() -> None:
    with pytest.raises(ValidationError, match="'SOL-PERP' is not a market"):
        _venue(GapRiskConfig(markets=(("SOL-PERP", SPEC),)))
    with pytest.raises(ValidationError, match="listed twice"):
        GapRiskConfig(markets=(("BTC-PERP", SPEC), ("BTC-PERP", SPEC)))
    with pytest.raises(ValidationError, match="give a default spec"):
        EngineConfig.from_dict({**waterfall_venue().to_dict(), "gap_risk": {}})
    kou = {"model": "kou", "sigma": "0.8", "lam": "20", "p_up": "0.4", "eta_up": "1", "eta_down": "12",
           "horizon_s": "60", "target": "0.001"}  # fmt: skip
    with pytest.raises(ValidationError, match=r"gap_risk.eta_up: must be in \[2, 1e6\]"):
        GapRiskSpec.from_dict(kou)
    # in range one by one, but 10 % jumps against a diffusion that moves 6e-12 in a millisecond: the crossing
    # table cannot resolve the target; the engine says so when it starts, not at the first account view
    tiny = GapRiskSpec(model="merton", sigma="0.001", lam="1", mu_j="-0.1", sigma_j="0.1", horizon_s="0.001",
                       target="0.0001")  # fmt: skip
    with pytest.raises(ValidationError, match=r"gap_risk.markets.BTC-PERP \(merton.*resolves probabilities down to"):
        Engine(_venue(GapRiskConfig(markets=(("BTC-PERP", tiny),))))
    out = quote_line(json.dumps({**QUOTE_LINE, "gap_risk": dataclasses.asdict(tiny)}))
    assert out is not None and "resolves probabilities down to" in out["error"]


# --- `fluidmargin quote` --------------------------------------------------------------------------------

# Alice_1BTC_Long_50_000 as a quote: isolated, 4000 USD margin -> bankrupt at 50 000 - 4000 = 46 000 (ratio 0.92)
QUOTE_LINE = {"preset": "binance", "mmr": "0.004", "margin_mode": "isolated", "side": "long",
              "entry_price": "50000", "size": "1", "collateral": "4000", "leverage": 20}  # fmt: skip


def test_quote_with_and_without_gap_risk(table: jumps.CrossingTable) -> None:
    plain = quote(QUOTE_LINE)
    with_gap = quote({**QUOTE_LINE, "gap_risk": SPEC_WIRE})
    assert not {"gap_probability", "gap_addon", "bankruptcy_price"} & set(plain)
    assert {k: v for k, v in with_gap.items() if k in plain} == plain  # the rest is unchanged
    assert with_gap["bankruptcy_price"] == "46000"
    assert same_probability(with_gap["gap_probability"], p_direct(table, jumps.LONG, 0.92))
    assert Decimal(with_gap["gap_probability"]) > Decimal("0.0001")
    # the add-on, deposited, brings the quote's own probability under the target
    topped = quote({**QUOTE_LINE, "collateral": str(4000 + Decimal(with_gap["gap_addon"])), "gap_risk": SPEC_WIRE})
    assert Decimal(topped["gap_probability"]) <= Decimal("0.0001") and topped["gap_addon"] == "0"
    # a cross short with another position: bankrupt where collateral + the other's PnL - cost + size p = 0
    other = {"side": "long", "size": "1", "entry_price": "50000", "mark_price": "51000", "mmr": "0.004"}
    short = {**QUOTE_LINE, "side": "short", "margin_mode": "cross", "collateral": "3000", "other_positions": [other]}
    # fixed = 3000 + 1000 (the other's PnL) + 50 000 (a short's cost is -50 000) = 54 000 -> bankrupt at 54 000
    out = quote({**short, "gap_risk": SPEC_WIRE})
    assert out["bankruptcy_price"] == "54000"
    assert same_probability(out["gap_probability"], p_direct(table, jumps.SHORT, 1.08))


def test_quote_command_lines_with_and_without_gap_risk() -> None:
    lines = [json.dumps(QUOTE_LINE), json.dumps({**QUOTE_LINE, "gap_risk": SPEC_WIRE}),
             json.dumps({**QUOTE_LINE, "gap_risk": {**SPEC_WIRE, "target": "2"}})]  # fmt: skip
    res = CliRunner().invoke(cli_app, ["quote"], input="\n".join(lines) + "\n")
    assert res.exit_code == 0, res.output
    outs = [json.loads(x) for x in res.output.splitlines()]
    assert outs[0] == quote(QUOTE_LINE) and "gap_probability" not in outs[0]
    assert outs[1] == quote({**QUOTE_LINE, "gap_risk": SPEC_WIRE})
    assert outs[2] == {"error": "gap_risk.target: must be in (0, 1), got 2"}
    assert all(not isinstance(v, float) for o in outs for v in o.values())


# --- the account view over HTTP ------------------------------------------------------------------------

ADMIN = "fm_test-admin-key"


@contextmanager
def _server(tmp: Path, cfg: EngineConfig) -> Iterator[httpx.Client]:
    # event time advances 1 ns a request, so no funding accrues between the figures this test reads
    ticks = itertools.count(1_700_000_000 * 10**9)
    app = create_app(ServiceSettings(db=tmp / "log.db", config=cfg, admin_key=ADMIN, clock=lambda: next(ticks)))
    with (
        ServerThread(app) as url,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30) as c,
    ):
        yield c


def _ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, f"{r.request.url}: {r.status_code} {r.text}"
    return r.json()


def test_account_view_shows_gap_risk_over_http(tmp_path: Path, table: jumps.CrossingTable) -> None:
    cfg = _venue(GapRiskConfig(markets=(("BTC-PERP", SPEC),)))
    with _server(tmp_path, cfg) as c:
        pub = _ok(c.post("/v1/keys", json={"role": "publisher", "source": "feed"}), 201)["api_key"]
        as_pub = {"Authorization": f"Bearer {pub}"}
        for asset, price in (("BTC", "50000"), ("ETH", "3000")):
            _ok(c.post("/v1/prices", json={"asset": asset, "price": price}, headers=as_pub))
        a = _ok(c.post("/v1/accounts", json={}), 201)["account_id"]
        _ok(c.post(f"/v1/accounts/{a}/deposits", json={"amount": "6000"}))
        _ok(c.post(f"/v1/accounts/{a}/fills", json={"market": "BTC-PERP", "size": "1", "price": "50000"}))
        _ok(c.post(f"/v1/accounts/{a}/fills", json={"market": "ETH-PERP", "size": "-0.1", "price": "3000"}))
        _ok(c.post("/v1/prices", json={"asset": "BTC", "price": "48000"}, headers=as_pub))
        view = _ok(c.get(f"/v1/accounts/{a}"))
        AccountView.model_validate(view)  # the documented schema
        btc = next(p for p in view["positions"] if p["market"] == "BTC-PERP")
        eth = next(p for p in view["positions"] if p["market"] == "ETH-PERP")
        assert eth["gap_risk"] is None  # no model configured for ETH
        g = btc["gap_risk"]
        # cross: fixed = equity - BTC's value = 6000 cash - 50 000 BTC cost - funding owed (ETH's PnL is 0 at
        # its entry, less its funding owed) = -44 000 - f, whatever the mark -> bankrupt at 44 000 + f
        f = Decimal(btc["funding_owed"]) + Decimal(eth["funding_owed"])
        assert Decimal(0) <= f < Decimal("0.001")  # event time moves 1 ns a request: a quantum or so of funding
        mark = Decimal(btc["mark_price"])
        assert Decimal(g["bankruptcy_price"]) == 44_000 + f
        assert same_probability(g["probability"], p_direct(table, jumps.LONG, float((44_000 + f) / mark)))
        assert (g["model"], g["horizon_s"], g["target"]) == ("merton", "3600", "0.0001")
        assert Decimal(g["probability"]) > Decimal("0.0001") and Decimal(g["addon_quote"]) > 0
        assert all(isinstance(v, str) for v in g.values())  # decimal strings, never JSON floats
        what_if = _ok(c.post(f"/v1/accounts/{a}/what-if", json={"market": "ETH-PERP", "size": "0.1", "price": "3000"}))
        assert next(p for p in what_if["before"]["positions"] if p["market"] == "BTC-PERP")["gap_risk"] == g
        # deposit the add-on: the view's probability is now at or under the target, no add-on left
        _ok(c.post(f"/v1/accounts/{a}/deposits", json={"amount": g["addon_quote"]}))
        g2 = next(p for p in _ok(c.get(f"/v1/accounts/{a}"))["positions"] if p["market"] == "BTC-PERP")["gap_risk"]
        assert Decimal(g2["probability"]) <= Decimal("0.0001") and g2["addon_quote"] == "0"


# --- `fluidmargin fit-jumps` ----------------------------------------------------------------------------

CRASH_1M = ("binance_spot_1m_2021-04-20_to_2021-05-20_crash_2021-05-19", "BTC_USDT-1m.csv.gz")


def test_fit_jumps_on_the_crash_day() -> None:
    path = shared_path("prices", *CRASH_1M)
    # 2021-05-19 00:00 UTC = 1621382400000 ms; 1441 one-minute candles -> 1440 returns, none across a gap
    res = CliRunner().invoke(cli_app, ["fit-jumps", str(path), "--start", "2021-05-19", "--limit", "1441", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)[str(path)]
    assert (out["n_obs"], out["gaps_dropped"], out["first_ts_ms"]) == (1440, 0, 1621382400000)
    spec = GapRiskSpec.from_dict(out["gap_risk"])  # ready for a config as printed
    _venue(GapRiskConfig(default=spec))
    # the same fit, done here from the file: log returns of consecutive closes, one minute = 1/525 600 years
    c = load_candles(path).window(1621382400000, 1441)
    fit = jumps.fit_merton(np.diff(np.log(c.close)), 60 / (365 * 86400))
    p = fit.params
    assert isinstance(p, jumps.MertonParams)
    for name, value in (("sigma", p.sigma_annual), ("lam", p.lam_per_year), ("mu_j", p.jump_mean),
                        ("sigma_j", p.jump_std)):  # fmt: skip
        assert float(getattr(spec, name)) == pytest.approx(value, rel=1e-5), name
    # a crash day is wild: the fitted diffusion vol is well above BTC's usual 50-80 %
    assert float(spec.sigma) > 1.0


def test_fit_jumps_refuses_bad_input(tmp_path: Path) -> None:
    path = shared_path("prices", *CRASH_1M)
    few = CliRunner().invoke(cli_app, ["fit-jumps", str(path), "--limit", "100"])
    assert few.exit_code == 2 and "99 observations, at least 500 needed" in few.output
    bad_model = CliRunner().invoke(cli_app, ["fit-jumps", str(path), "--model", "heston"])
    assert bad_model.exit_code == 2 and "--model: 'heston' is not one of merton, kou" in bad_model.output
    bad_target = CliRunner().invoke(cli_app, ["fit-jumps", str(path), "--target", "1"])
    assert bad_target.exit_code == 2 and "gap_risk.target: must be in (0, 1)" in bad_target.output
    missing = CliRunner().invoke(cli_app, ["fit-jumps", str(tmp_path / "none.csv")])
    assert missing.exit_code == 2 and "no such file" in missing.output
