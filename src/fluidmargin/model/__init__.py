"""Immutable domain types: instruments, configs, events. No I/O, no clocks, no mutation."""
