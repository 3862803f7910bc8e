"""`fluidmargin demo` (placeholder until implemented)."""
