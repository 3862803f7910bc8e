"""Oracle validity, aggregation and mark price (risk.oracle)."""

from __future__ import annotations

import pytest

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.units import PRICE_SCALE
from fluidmargin.model.instruments import OraclePolicy
from fluidmargin.risk.perp.oracle import Action, Validity, aggregate, allowed, classify, mark_price_q, staleness

P = PRICE_SCALE  # one quote per base unit, in price quantums
POLICY = OraclePolicy(max_jump_ppm=250_000, min_confidence_ppm=900_000, max_divergence_ppm=20_000)
T0 = 1_700_000_000 * 10**9


@pytest.mark.parametrize(
    ("raw", "confidence", "ts", "last_ts", "last_index", "validity", "reason", "price_q"),
    [
        # State: the source's last timestamp and the last valid index; Parameters: the raw tick
        pytest.param("100.5", 1_000_000, T0, None, None, Validity.VALID, "", 100_5 * P // 10, id="first-valid"),
        pytest.param("NaN", 1_000_000, T0, None, None, Validity.INVALID, "non-finite", None, id="nan"),
        pytest.param("inf", 1_000_000, T0, None, None, Validity.INVALID, "non-finite", None, id="inf"),
        pytest.param("-Infinity", 1_000_000, T0, None, None, Validity.INVALID, "non-finite", None, id="-inf"),
        pytest.param("abc", 1_000_000, T0, None, None, Validity.INVALID, "unparseable", None, id="garbage"),
        pytest.param("1e400", 1_000_000, T0, None, None, Validity.INVALID, "too large", None, id="huge"),
        pytest.param("0", 1_000_000, T0, None, None, Validity.INVALID, "non-positive", None, id="zero"),
        pytest.param("-3", 1_000_000, T0, None, None, Validity.INVALID, "non-positive", None, id="negative"),
        # below one price quantum (1e-8) rounds down to zero: not a usable price
        pytest.param("0.000000001", 1_000_000, T0, None, None, Validity.INVALID, "non-positive", None, id="sub-q"),
        pytest.param("100", 1_000_000, T0, T0, None, Validity.INVALID, "out of order", None, id="same-ts"),
        pytest.param("100", 1_000_000, T0 - 1, T0, None, Validity.INVALID, "out of order", None, id="older"),
        pytest.param("100", 899_999, T0, None, None, Validity.LOW_CONFIDENCE, "confidence", 100 * P, id="low-conf"),
        pytest.param("100", 900_000, T0, None, None, Validity.VALID, "", 100 * P, id="conf-at-min"),
        # 25 % move is the limit (inclusive); one quantum more is too volatile
        pytest.param("125", 1_000_000, T0, None, 100 * P, Validity.VALID, "", 125 * P, id="jump-at-limit"),
        pytest.param(
            "125.00000001",
            1_000_000,
            T0,
            None,
            100 * P,
            Validity.TOO_VOLATILE,
            "jump",
            125 * P + 1,
            id="jump-up",
        ),
        pytest.param("74.9", 1_000_000, T0, None, 100 * P, Validity.TOO_VOLATILE, "jump", 749 * P // 10, id="jump-dn"),
    ],
)
def test_classify(
    raw: str,
    confidence: int,
    ts: int,
    last_ts: int | None,
    last_index: int | None,
    validity: Validity,
    reason: str,
    price_q: int | None,
) -> None:
    c = classify(raw, confidence, ts, last_ts, last_index, POLICY)
    assert c.validity is validity
    assert reason in c.reason
    assert bool(c.reason) == (validity is not Validity.VALID)  # every rejection says why
    assert c.price_q == price_q


@pytest.mark.parametrize(
    ("prices", "policy", "validity", "index"),
    [
        # band 2 % around the median; the outlier is dropped, the median of the rest is kept
        pytest.param([100 * P, 101 * P, 150 * P], POLICY, Validity.VALID, 1005 * P // 10, id="outlier-dropped"),
        # two far from the median of three: no majority agrees
        pytest.param([100 * P, 120 * P, 150 * P], POLICY, Validity.DIVERGENT, None, id="divergent"),
        # five sources, two outliers: three agree
        pytest.param(
            [70 * P, 100 * P, 1005 * P // 10, 101 * P, 130 * P],
            POLICY,
            Validity.VALID,
            1005 * P // 10,
            id="5-of-2-out",
        ),
        # the index is the median of the kept sources, not their mean (100.2, not 100.5667)
        pytest.param(
            [100 * P, 1002 * P // 10, 1015 * P // 10, 150 * P],
            POLICY,
            Validity.VALID,
            1002 * P // 10,
            id="median-kept",
        ),
        # even count: the median is the mean of the middle two, rounded down
        pytest.param([100 * P, 100 * P + 1], POLICY, Validity.VALID, 100 * P, id="two-agree"),
        pytest.param([100 * P, 100 * P, 200 * P, 300 * P], POLICY, Validity.DIVERGENT, None, id="four-split"),
        pytest.param(
            [100 * P, 101 * P],
            OraclePolicy(min_sources=3),
            Validity.STALE,
            None,
            id="too-few-sources",
        ),
        pytest.param(
            [100 * P, 101 * P, 102 * P, 150 * P],
            OraclePolicy(aggregation="mean"),
            Validity.VALID,
            101 * P,
            id="mean-of-kept",
        ),
    ],
)
def test_aggregate(prices: list[int], policy: OraclePolicy, validity: Validity, index: int | None) -> None:
    v, idx, reason = aggregate(prices, policy)
    assert v is validity
    assert idx == index
    assert bool(reason) == (validity is not Validity.VALID)


@pytest.mark.parametrize(
    ("validity", "action", "expected"),
    [
        pytest.param(Validity.VALID, Action.OPEN, True, id="valid-open"),
        pytest.param(Validity.STALE, Action.OPEN, False, id="stale-open"),
        pytest.param(Validity.STALE, Action.MARGIN, True, id="stale-margin"),
        pytest.param(Validity.STALE, Action.LIQUIDATE, True, id="stale-liquidate"),
        pytest.param(Validity.LOW_CONFIDENCE, Action.LIQUIDATE, False, id="lowconf-liquidate"),
        pytest.param(Validity.INVALID, Action.MARGIN, False, id="invalid-margin"),
    ],
)
def test_allowed_default_policy(validity: Validity, action: Action, expected: bool) -> None:
    assert allowed(validity, action, OraclePolicy()) is expected


def test_staleness_boundary() -> None:
    policy = OraclePolicy(max_staleness_ns=120 * 10**9)
    assert staleness(T0 + 120 * 10**9, T0, policy) is Validity.VALID
    assert staleness(T0 + 120 * 10**9 + 1, T0, policy) is Validity.STALE
    assert staleness(T0, None, policy) is Validity.STALE


def test_mark_price_median3() -> None:
    # index 100, rate 0.01 % with half the interval to go: 100 * (1 + 0.0001 * 0.5) = 100.005;
    # index + basis 0.02 = 100.02; last trade 100.01 -> the median is the last trade
    half = 4 * 3600 * 10**9
    mark = mark_price_q("median3", 100 * P, last_trade_q=10001 * P // 100, funding_rate_e9=100_000,
                        time_to_funding_ns=half, basis_q=2 * P // 100)  # fmt: skip
    assert mark == 10001 * P // 100
    # without a last trade: the median of two is their mean, rounded down: (100.005 + 100.02) / 2
    assert mark_price_q("median3", 100 * P, None, 100_000, half, basis_q=2 * P // 100) == 1000125 * P // 10000
    assert mark_price_q("index", 100 * P) == 100 * P
    with pytest.raises(ValidationError):
        mark_price_q("twap", 100 * P)
