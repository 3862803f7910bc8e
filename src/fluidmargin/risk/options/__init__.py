"""Options: Black-76 prices and Greeks, vol surfaces, portfolio margin by scenarios and its batch screen."""
