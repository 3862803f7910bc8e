"""The deterministic state machine: applies events in order, owns the account arrays.

:class:`Engine` (``engine.py``) is the entry point; the rooms it delegates to, the ports its components
are typed against, and the value types they share are modules of this package (see ``engine.py``).
"""

from fluidmargin.engine.engine import Engine
from fluidmargin.engine.types import Bucket, BucketRisk

__all__ = ["Bucket", "BucketRisk", "Engine"]
