"""Text and markdown tables, and reports, made from artifacts only (JSON results, plan.json, tuning.db).

Every function here takes what a command or script wrote (a report's `to_json()`, a results
file) and returns text: `tables` renders markdown and terminal tables and replaces a README's
generated table, `summaries` makes what each command prints.
"""

from ago_search.report.summaries import (
    format_bench,
    format_collect,
    format_cost_model_metrics,
    format_inspect,
    format_remeasure,
    format_search,
    format_tuned,
)
from ago_search.report.tables import markdown_table, replace_table, text_table

__all__ = [
    "format_bench",
    "format_collect",
    "format_cost_model_metrics",
    "format_inspect",
    "format_remeasure",
    "format_search",
    "format_tuned",
    "markdown_table",
    "replace_table",
    "text_table",
]
