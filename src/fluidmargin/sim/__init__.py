"""Scenario generators and account populations (no margin maths of their own)."""
