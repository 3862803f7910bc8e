"""Statistics of prices: volatility estimators, HAR-RV forecasts, jump-diffusion fits, gap risk."""
