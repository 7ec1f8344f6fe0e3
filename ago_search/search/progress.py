"""The search's one progress bar: elapsed of the budget, best predicted and best measured
latency (and how far the prediction moved from the start), measurements, plans scored."""

from __future__ import annotations

from typing import Any

__all__ = ["SearchProgressBar"]


class SearchProgressBar:
    """A tqdm bar over the budget's seconds; call it with the driver's progress dicts."""

    def __init__(self, budget_s: float, spent_s: float = 0.0, enabled: bool = True) -> None:
        from tqdm import tqdm

        self._bar = tqdm(
            total=round(budget_s),
            initial=min(round(spent_s), round(budget_s)),
            unit="s",
            desc="search",
            disable=not enabled,
            bar_format="{desc} {percentage:3.0f}%|{bar:20}| {n_fmt}/{total_fmt} s {postfix}",
            dynamic_ncols=True,
        )

    def __call__(self, progress: dict[str, Any]) -> None:
        bar = self._bar
        done = min(round(progress["spent_s"]), bar.total)
        if done > bar.n:
            bar.update(done - bar.n)
        parts = []
        predicted = progress.get("best_predicted_s")
        if predicted is not None:
            parts.append(f"predicted {predicted * 1e3:.3g} ms")
        measured, first = progress.get("best_measured_s"), progress.get("first_measured_s")
        if measured:
            gain = f" ({first / measured:.2f}x vs first)" if first and first != measured else ""
            parts.append(f"measured {measured * 1e3:.3g} ms{gain}")
        else:
            parts.append("measured -")
        parts.append(f"{progress.get('measurements', 0)} measurements")
        parts.append(f"{progress.get('plans_scored', 0)} plans")
        bar.set_postfix_str(", ".join(parts), refresh=True)

    def close(self) -> None:
        self._bar.close()
