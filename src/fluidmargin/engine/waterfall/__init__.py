"""The liquidation waterfall: sizing, then execution, insurance funds, ADL, auctions, the backstop vault.

:mod:`.sizing` decides how much of a breached bucket to close; :mod:`.core` (:class:`Waterfall`) takes it
over as inventory and executes it (:mod:`.impact`, :mod:`.auctions`, :mod:`.vault`), covering shortfalls
from :mod:`.funds`, then by :mod:`.deleverage`. Each works on the engine through
:class:`~fluidmargin.engine.ports.WaterfallHost` / :class:`~fluidmargin.engine.ports.SizingHost`.
"""

from fluidmargin.engine.waterfall.auctions import auction_params
from fluidmargin.engine.waterfall.core import Waterfall
from fluidmargin.engine.waterfall.funds import MAIN_FUND
from fluidmargin.engine.waterfall.lots import Auction, Block, Order, hand_over, inventory_pnl
from fluidmargin.engine.waterfall.sizing import CloseAtMark, Liquidator, PartialToTarget

__all__ = [
    "MAIN_FUND",
    "Auction",
    "Block",
    "CloseAtMark",
    "Liquidator",
    "Order",
    "PartialToTarget",
    "Waterfall",
    "auction_params",
    "hand_over",
    "inventory_pnl",
]
