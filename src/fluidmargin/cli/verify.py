"""`fluidmargin verify` (placeholder until implemented)."""
