"""Pure risk functions: oracle aggregation, margin models, funding, liquidation prices.

Plain values in, values out: no state, no clock, no I/O. The engine, the CLI's ``quote`` and the
simulator call the same functions.
"""
