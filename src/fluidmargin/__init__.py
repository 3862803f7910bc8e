"""fluidmargin: a deterministic, event-sourced real-time margin engine for crypto derivatives.

Layers (imports point one way only): core <- model <- risk <- engine <- {store, sim, cli}.
"""

__version__ = "0.1.0"
