"""Linear perpetuals: tier margin, dynamic rates, funding, oracle aggregation, liquidation prices, the health screen."""
