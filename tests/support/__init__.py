"""Shared test support: data paths, the Desk driver, hypothesis strategies."""
