"""Plain configuration objects of the cost model."""
