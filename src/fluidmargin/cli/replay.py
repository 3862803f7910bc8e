"""`fluidmargin replay` (placeholder until implemented)."""
