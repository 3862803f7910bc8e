"""dYdX v4 open-interest-scaled initial margin and Drift v2 size premium, from their own tests.

dYdX: dydxprotocol/v4-chain@01a48f236c5640df172482db21cd26b8f28ff781
protocol/x/perpetuals/types/liquidity_tier_test.go::TestGetInitialMarginQuoteQuantums. Amounts are
USDC quote quantums (1e-6), the same unit as our ``*_quote_q``, so they go in as integers.

Drift: drift-labs/protocol-v2 programs/drift/src/math/margin/tests.rs (size premium cases for perp
``smart_hlm_size`` and spot liability weights), for
``fluidmargin.risk.perp.margin.drift_size_premium_ratio``.
"""

from __future__ import annotations

import math

import pytest

from fluidmargin.core.units import PPM, Rounding, div_round
from fluidmargin.model.instruments import Bracket, BracketModel
from fluidmargin.risk.perp import presets
from fluidmargin.risk.perp.margin import drift_size_premium_ratio, initial_quote_q, maintenance_quote_q

# --- dYdX ------------------------------------------------------------------------------------------

DYDX_IM_CASES = [
    # imf_ppm, oi_lower_q, oi_upper_q, open_interest_q, notional_q, expected IM (quote quantums)
    # "initial margin 20%": 20% * 500_000
    pytest.param(200_000, None, None, 0, 500_000, 100_000, id="imf20"),
    # "initial margin 50%": 50% * 1_000_000
    pytest.param(500_000, None, None, 0, 1_000_000, 500_000, id="imf50"),
    # "initial margin 10%, quote quantums = 1, should round up to 1": 0.1 -> 1
    pytest.param(100_000, None, None, 0, 1, 1, id="imf10-rounds-up"),
    # "initial margin 56.7243%, quote quantums = 123_456": 70029.5518 -> 70_030
    pytest.param(567_243, None, None, 0, 123_456, 70_030, id="imf56.7243-rounds-up"),
    # "base IMF = 20%, scaling_factor = 0.5": 20% + 0.5 * 80% = 60% of 500_000
    pytest.param(200_000, 10**12, 2 * 10**12, 1_500_000_000_000, 500_000, 300_000, id="oi-half"),
    # "open_interest >> upper_cap": OIMF capped at 100%
    pytest.param(200_000, 25 * 10**12, 50 * 10**12, 80 * 10**12, 500_000, 500_000, id="oi-above-upper"),
    # "open_interest = lower_cap so scaling_factor = 0"
    pytest.param(200_000, 25 * 10**12, 50 * 10**12, 25 * 10**12, 500_000, 100_000, id="oi-at-lower"),
    # "realistic numbers": (28.123.. - 25) / (60 - 25) * 80% + 20% ~= 27.1393% of 500_000 -> 135_697
    pytest.param(200_000, 25 * 10**12, 60 * 10**12, 28_123_456_789_123, 500_000, 135_697, id="oi-realistic"),
]


def dydx_model(imf_ppm: int, lower: int | None, upper: int | None) -> BracketModel:
    """A dYdX liquidity tier as a raw model; the bracket's max leverage is set so it never binds."""
    return BracketModel(
        name="dydx-raw",
        brackets=(Bracket(0, max(1, imf_ppm // 2), 0, PPM),),
        imr_floor_ppm=imf_ppm,
        oi_lower_quote_q=lower,
        oi_upper_quote_q=upper,
    )


@pytest.mark.parametrize(("imf_ppm", "lower", "upper", "oi", "notional", "expected"), DYDX_IM_CASES)
def test_dydx_initial_margin_raw_model(
    imf_ppm: int, lower: int | None, upper: int | None, oi: int, notional: int, expected: int
) -> None:
    # initial_ratio = max(1/min(leverage, bracket max), imr_floor): leverage 1e6 with a 1e6x bracket
    # makes 1/leverage = 1 ppm, below every IMF here, so the IMF floor alone decides
    model = dydx_model(imf_ppm, lower, upper)
    assert initial_quote_q(model, notional, PPM, open_interest_quote_q=oi) == expected


@pytest.mark.parametrize(("imf_ppm", "lower", "upper", "oi", "notional", "expected"), DYDX_IM_CASES)
def test_dydx_initial_margin_through_preset(
    imf_ppm: int, lower: int | None, upper: int | None, oi: int, notional: int, expected: int
) -> None:
    # the same liquidity tiers through presets.dydx (caps in quote units, 1e12 quantums = 1M USDC);
    # the trader asks for the most leverage the tier allows
    model = presets.dydx(
        f"{imf_ppm / PPM}",
        "0.5",
        None if lower is None else lower // 10**6,
        None if upper is None else upper // 10**6,
    )
    lev = model.brackets[0].max_leverage
    assert initial_quote_q(model, notional, lev, open_interest_quote_q=oi) == expected


def test_dydx_preset_upper_cap_zero_disables_oi_scaling() -> None:
    # liquidity_tier_test.go "base IMF = 20%, no OIMF since lower_cap = upper_cap = 0": 20% of 500_000;
    # dYdX tiers without OI scaling are published with both caps 0
    model = presets.dydx("0.2", "0.5", 0, 0)
    assert initial_quote_q(model, 500_000, 5, open_interest_quote_q=1_500_000_000_000) == 100_000


# --- Drift size premium ----------------------------------------------------------------------------

DRIFT_CASES = [
    # size (1e9), imf_factor (1e6), ratio, precision, expected
    # perp smart_hlm_size: ratio 1000 (1e4): 1000 - 200 + isqrt(1e16 + 1) * 50 // 1e7 = 800 + 500
    pytest.param(10**15, 50, 1000, 10**4, 1300, id="perp-smart-hlm-size"),
    # spot liability weight 11000: 8800 + isqrt(1e13 + 1) * 10000 // 1e7 = 8800 + 3162
    pytest.param(10**12, 10_000, 11_000, 10**4, 11_962, id="spot-imf-10000"),
    # 8800 + 3162277 * 100000 // 1e7 = 8800 + 31622
    pytest.param(10**12, 100_000, 11_000, 10**4, 40_422, id="spot-imf-100000"),
    # ratio 0: the premium alone, 0 + 31622
    pytest.param(10**12, 100_000, 0, 10**4, 31_622, id="ratio-zero"),
    # imf_factor 0 returns the ratio unchanged
    pytest.param(10**15, 0, 1000, 10**4, 1000, id="no-imf"),
]


@pytest.mark.parametrize(("size", "imf", "ratio", "precision", "expected"), DRIFT_CASES)
def test_drift_size_premium_ratio(size: int, imf: int, ratio: int, precision: int, expected: int) -> None:
    assert drift_size_premium_ratio(size, imf, ratio, precision) == expected


def test_drift_premium_below_threshold_keeps_the_base_ratio() -> None:
    # small size: 0.8 * ratio + premium < ratio, so max() keeps the ratio
    assert drift_size_premium_ratio(10**9, 50, 1000, 10**4) == 1000


@pytest.mark.parametrize("base_units", [1_000, 4_000, 25_000], ids=lambda n: f"{n}base")
def test_drift_maintenance_grows_like_sqrt_size(base_units: int) -> None:
    # presets.drift: MMR 5 %, imf factor 0.0005. For sizes where the premium binds,
    # ratio(s) = 0.8 * MMR + sqrt(10 s_1e9) * imf / 1e5 (ppm), so (ratio(k^2 s) - 0.8 MMR) = k (...)
    model = presets.drift("0.1", "0.05", "0.0005")
    sd = 9
    price = 100 * 10**8  # 100 quote per base unit, so notional = size * 100
    k = 2

    def ratio_above_floor(n_base: int) -> float:
        size = n_base * 10**sd
        notional = div_round(size * price, 10 ** (sd + 2), Rounding.CEIL)
        mm = maintenance_quote_q(model, notional, size, sd)
        return mm / notional - 0.8 * 0.05

    small, big = ratio_above_floor(base_units), ratio_above_floor(k * k * base_units)
    assert small > 0.05 - 0.8 * 0.05  # the premium binds: above the flat 5 %
    assert big / small == pytest.approx(k, rel=1e-4)


def test_drift_maintenance_is_flat_for_small_sizes() -> None:
    model = presets.drift("0.1", "0.05", "0.0005")
    size = 10**9  # one base unit at sd 9: sqrt premium 0.8*5% + 0.0158% < 5%
    notional = 100 * 10**6
    assert maintenance_quote_q(model, notional, size, 9) == notional * 5 // 100
    assert math.isqrt(10 * size + 1) * 500 // 100_000 < 50_000 - 40_000
