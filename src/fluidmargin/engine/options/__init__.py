"""Options and portfolio-margin accounts: a component of the engine, typed against its port.

:mod:`.positions` (series, contracts, vols), :mod:`.valuation` (exact equity and portfolio margin),
:mod:`.screen` (the delta-gamma screen of portfolio accounts), :mod:`.liquidation` (portfolio
liquidation and hedging), and :mod:`.book` (:class:`OptionBook`: the inputs, fills, settlement).
"""

from fluidmargin.engine.options.book import VOL_DECIMALS, OptionBook
from fluidmargin.engine.options.positions import Series
from fluidmargin.engine.options.screen import PM_SCREEN
from fluidmargin.engine.options.valuation import CROSS_ASSET, PM_PARAMS, OptionValue, PortfolioFigures
from fluidmargin.engine.types import ISOLATED, MODE_NAMES, PORTFOLIO, STANDARD

__all__ = [
    "CROSS_ASSET",
    "ISOLATED",
    "MODE_NAMES",
    "PM_PARAMS",
    "PM_SCREEN",
    "PORTFOLIO",
    "STANDARD",
    "VOL_DECIMALS",
    "OptionBook",
    "OptionValue",
    "PortfolioFigures",
    "Series",
]
