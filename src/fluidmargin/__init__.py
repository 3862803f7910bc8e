"""fluidmargin: a deterministic, event-sourced real-time margin engine for crypto derivatives.

Layers (imports point one way only): core <- model <- risk <- engine <- {store, sim, cli}.
"""

import os as _os

# The screen kernel runs on numba's OpenMP pool for large markets. Size the pool to the cores this
# process may use (numba counts the host's) and let idle workers sleep instead of spinning: on a
# busy 2-core machine spinning workers starved Python ~10x. Set before numba is first imported.
_os.environ.setdefault("NUMBA_NUM_THREADS", str(max(1, len(_os.sched_getaffinity(0)))))
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
