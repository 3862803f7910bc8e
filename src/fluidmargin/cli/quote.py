"""`fluidmargin quote` (placeholder until implemented)."""
