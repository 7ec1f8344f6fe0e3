"""The one place a cost model is made from its `--cost-model` name.

Tuning (ago_search/schedule/) is handed a MetaSchedule `CostModel` object and never picks one
itself; the commands above it (api, collect, the search) name one and call `make_cost_model`.
"""

from __future__ import annotations

from typing import Any

from tvm.s_tir import meta_schedule as ms

from ago_search.devices import host_num_cores
from ago_search.errors import AgoSearchError

__all__ = ["COST_MODELS", "make_cost_model"]

COST_MODELS = ("gnn", "xgb", "xgb-ms", "random")


def make_cost_model(name: str, seed: int | None = None, **kwargs: Any) -> Any:
    """The MetaSchedule cost model a `--cost-model` choice names:
    "gnn" (ours: the shipped pretrained GNN unless a `predictor` is given, blended with an
    online XGB), "xgb" (MetaSchedule's XGBModel with its pack-sum training step fixed,
    cost_model/xgb.py), "xgb-ms" (XGBModel as MetaSchedule ships it) or "random"."""
    if name == "gnn":
        from cost_model.ms_adapter import GNNCostModel

        if seed is not None:
            kwargs.setdefault("seed", seed)
        model = GNNCostModel(**kwargs)
    elif name in ("xgb", "xgb-ms"):
        from cost_model.xgb import xgb_model_class

        kwargs.setdefault("num_tuning_cores", host_num_cores())
        model = xgb_model_class(name)(**kwargs)
    elif name == "random":
        model = ms.cost_model.RandomModel(seed=seed, **kwargs)
    else:
        raise AgoSearchError(f"unknown cost model {name!r}: choose one of {', '.join(COST_MODELS)}")
    model.label = name  # what tuning reports it as
    return model
