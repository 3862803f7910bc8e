"""Jump-diffusion gap risk, in one place: Merton and Kou models, their fits, and the probability of crossing a
barrier. This module gathers the public names of the three modules that hold them:

- :mod:`~fluidmargin.risk.stats.jump_models`: the models (log price ``X_t = X_0 + mu t + sigma W_t + sum Y_i``,
  Merton's normal or Kou's double-exponential jumps ``Y``), their simulation, the exact densities of their
  returns and Merton's call price;
- :mod:`~fluidmargin.risk.stats.jump_fit`: maximum-likelihood fits (:func:`fit_merton`, :func:`fit_kou`);
  too little history raises :class:`~fluidmargin.risk.stats.vol.InsufficientHistory`;
- :mod:`~fluidmargin.risk.stats.jump_crossing`: ``P(cross)``, the probability that the price touches an
  account's bankruptcy price within the liquidation horizon, tabulated once per market
  (:func:`crossing_table`), looked up per account in O(1) (:func:`crossing_probability`, numba) and inverted
  into a collateral add-on (:func:`gap_addon_fraction`).
"""

from __future__ import annotations

from fluidmargin.risk.stats.jump_crossing import (
    LONG,
    SHORT,
    CrossingTable,
    crossing_probability,
    crossing_probability_py,
    crossing_table,
    gap_addon_fraction,
    gbm_hit_probability,
    required_barrier_ratio,
    required_log_distance,
)
from fluidmargin.risk.stats.jump_fit import MIN_OBS_JUMP_FIT, JumpFit, fit_kou, fit_merton
from fluidmargin.risk.stats.jump_models import (
    DoubleExponentialJumps,
    KouParams,
    MertonParams,
    NormalJumps,
    kou_logpdf,
    martingale_drift,
    merton_call_price,
    merton_logpdf,
    simulate_log_returns,
)

__all__ = [
    "LONG",
    "MIN_OBS_JUMP_FIT",
    "SHORT",
    "CrossingTable",
    "DoubleExponentialJumps",
    "JumpFit",
    "KouParams",
    "MertonParams",
    "NormalJumps",
    "crossing_probability",
    "crossing_probability_py",
    "crossing_table",
    "fit_kou",
    "fit_merton",
    "gap_addon_fraction",
    "gbm_hit_probability",
    "kou_logpdf",
    "martingale_drift",
    "merton_call_price",
    "merton_logpdf",
    "required_barrier_ratio",
    "required_log_distance",
    "simulate_log_returns",
]
