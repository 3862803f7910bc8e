"""The numba screen against its plain-Python twin and against exact integer arithmetic."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fluidmargin.core.units import FUNDING_SCALE, PRICE_DECIMALS, QUOTE_DECIMALS, QUOTE_SCALE
from fluidmargin.risk.perp import funding, kernels, margin, presets

MODELS = {
    "binance": presets.binance_btcusdt(),
    "hyperliquid": presets.hyperliquid(((0, 40), (10_000, 25), (50_000, 10), (100_000, 5), (300_000, 3))),
    "drift": presets.drift("0.1", "0.05", "0.0005"),
    "flat": presets.single_rate("0.01", "0"),
}


def _consts(model, size_decimals):
    floors = np.array([b.floor_quote_q for b in model.brackets], dtype=np.float64)
    rates = np.array([b.mmr_ppm / 1e6 for b in model.brackets], dtype=np.float64)
    cums = np.array([b.cum_quote_q for b in model.brackets], dtype=np.float64)
    kv = 10.0 ** -(size_decimals + PRICE_DECIMALS - QUOTE_DECIMALS)
    kf = QUOTE_SCALE / (10.0**size_decimals * FUNDING_SCALE)
    return floors, rates, cums, kv, kf


position = st.tuples(
    st.integers(-(10**12), 10**12).filter(bool),  # size, base quantums (1e-8): up to 10k BTC
    st.integers(1, 10**14),  # entry price_q (up to 1M)
    st.integers(1, 10**14),  # mark price_q
    st.integers(-(10**16), 10**16),  # funding index now
    st.integers(-(10**16), 10**16),  # funding index at last settlement
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(MODELS)), st.lists(position, min_size=1, max_size=30))
def test_kernel_matches_twin_and_bounds_exact(model_name, positions):
    """Kernel == Python twin bit for bit, and |float contribution - exact| <= its error bound."""
    model = MODELS[model_name]
    sd = 8
    floors, rates, cums, kv, kf = _consts(model, sd)
    n = len(positions)
    size = np.array([p[0] for p in positions], dtype=np.int64)
    cost = np.array([margin.value_quote_q(s, e, sd, margin.Rounding.CEIL) for s, e, *_ in positions], dtype=np.int64)
    fidx_last = np.array([p[4] for p in positions], dtype=np.int64)
    # one market per kernel call: the same mark and funding index for all positions
    mark, fnow = positions[0][2], positions[0][3]
    pos_c = np.zeros(n)
    pos_e = np.zeros(n)
    pos_mm = np.zeros(n)
    acct_f = np.zeros((n, 8))
    flag = np.zeros(n, dtype=np.uint8)
    drift_imf = float(model.sqrt_imf_factor_ppm)
    kernels.remargin_market(
        np.arange(n),
        np.arange(n),
        size,
        cost,
        fidx_last,
        np.zeros(n, np.int8),
        np.zeros(n, np.int64),
        pos_c,
        pos_e,
        pos_mm,
        np.zeros(n),
        np.zeros((n, 4)),
        fnow,
        float(mark),
        kv,
        kf,
        floors,
        rates,
        cums,
        2.0,
        drift_imf,
        10.0 ** (9 - sd),
        acct_f,
        0.2,
        0.3,
        np.zeros(n, np.int8),
        flag,
    )
    for i in range(n):
        c, e, mm = kernels.contribution_py(
            int(size[i]),
            int(cost[i]),
            fnow,
            int(fidx_last[i]),
            float(mark),
            kv,
            kf,
            floors,
            rates,
            cums,
            2.0,
            drift_imf,
            10.0 ** (9 - sd),
        )
        assert (pos_c[i], pos_e[i], pos_mm[i]) == (c, e, mm)
        owed = funding.funding_owed_quote_q(int(size[i]), fnow, int(fidx_last[i]), sd)
        exact = margin.position_risk(model, int(size[i]), int(cost[i]), owed, mark, sd)
        exact_c = exact.upnl_quote_q - exact.mm_quote_q
        assert abs(c - exact_c) <= e, (c, exact_c, e)
        # the account's shadow (one position each) is within its accumulated bound too
        assert abs(acct_f[i, 0] - exact_c) <= acct_f[i, 2]


@settings(max_examples=300, deadline=None)
@given(
    st.floats(-1e12, 1e12),
    st.floats(0, 1e6),
    st.floats(0, 1e12),
    st.sampled_from([0, 1]),
)
def test_flag_rule_is_conservative(h, eb, mm, status):
    """Never unflagged when the exact health could be a breach or could move the status across its band."""
    b_in, b_out = 0.2, 0.3
    flagged = kernels.may_change_py(h, eb, mm, b_in, b_out, status)
    for exact_h in (h - eb, h, h + eb):
        for exact_mm in (max(mm - eb, 0.0), mm, mm + eb):
            changes = (status == 0 and exact_h < b_in * exact_mm) or (status == 1 and exact_h >= b_out * exact_mm)
            if exact_h < 0 or changes:
                assert flagged, (h, eb, mm, status, exact_h, exact_mm)
