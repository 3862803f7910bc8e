"""The deterministic state machine: applies events in order, owns the account arrays."""

from fluidmargin.engine.engine import Bucket, BucketRisk, Engine

__all__ = ["Bucket", "BucketRisk", "Engine"]
