"""External formats: Derive portfolio-margin cases, the quote CLI's JSON lines."""
