"""The liquidation waterfall's maths: partial sizing, Dutch auctions, ADL, impact, breakers, mass closes."""
