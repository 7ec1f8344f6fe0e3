"""Text and markdown tables, and reports, made from artifacts only (JSON results, plan.json, tuning.db)."""
