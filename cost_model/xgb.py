"""MetaSchedule's XGBoost cost model with its Newton step sized for the pack-sum format.

`XGBModel` predicts a candidate's score as the *sum* of one tree output per buffer store (the
"pack-sum" format) and trains with a custom objective whose per-row hessian ignores that sum:
XGBoost then moves every row of a leaf by the full Newton step, so a candidate whose k stores
share the leaf moves k times too far. With MetaSchedule's learning rate (eta 0.2) training
diverges once candidates have more than about 2 / 0.2 = 10 stores, which the intensively fused
groups of our partitions have (up to 21 on the zoo). Seen on our traces: the training RMSE grew
from 1.8 to 1.8e14 in 50 rounds, early stopping kept the first tree, and the model ranked
held-out tasks worse than chance (Kendall tau -0.13 on dbnet).

`PackSumXGBModel` is `XGBModel` with one change: each row's hessian is multiplied by its
candidate's number of rows, the exact hessian when all of a candidate's rows fall in one leaf
and a safe bound otherwise. Everything else (features, target, configuration, early stopping,
save/load) is MetaSchedule's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.cost_model import xgb_model as _ms_xgb

__all__ = ["PackSumXGBModel", "xgb_model_class"]


class _PackSum(_ms_xgb.PackSum):
    def obj_square_error(self, ys_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ys_pred = self.predict_with_score(ys_pred)[self.ids]
        ys = self.dmatrix.get_label()
        rows = np.bincount(self.ids)[self.ids]  # rows of each row's candidate
        return (ys_pred - ys) * ys, rows * ys


@derived_object
class PackSumXGBModel(_ms_xgb.XGBModel._cls):  # type: ignore[name-defined,misc]
    """`XGBModel` whose training step accounts for the pack-sum (see the module)."""

    def _train(self, xs: list[np.ndarray], ys: np.ndarray) -> None:
        import xgboost as xgb

        self.d_train = _PackSum(xs=xs, ys=ys)

        def obj(ys_pred: np.ndarray, _d: Any) -> tuple[np.ndarray, np.ndarray]:
            return self.d_train.obj_square_error(ys_pred)

        def rmse(ys_pred: np.ndarray, _d: Any) -> tuple[str, float]:
            return self.d_train.rmse(ys_pred)

        def avg_peak_score(ys_pred: np.ndarray, _d: Any) -> tuple[str, float]:
            return self.d_train.average_peak_score(ys_pred, self.average_peak_n)

        self.booster = xgb.train(
            self.config.to_dict(),
            self.d_train.dmatrix,
            num_boost_round=10000,
            obj=obj,
            callbacks=[
                _ms_xgb._get_custom_call_back(
                    early_stopping_rounds=self.early_stopping_rounds,
                    verbose_eval=self.verbose_eval,
                    fevals=[rmse, avg_peak_score],
                    evals=[(self.d_train.dmatrix, "tr")],
                    cvfolds=None,
                )
            ],
        )
        del self.d_train


def xgb_model_class(name: str) -> type:
    """The XGB cost model class of a tuning name: "xgb" ours, "xgb-ms" MetaSchedule's."""
    if name == "xgb":
        return PackSumXGBModel
    if name == "xgb-ms":
        return _ms_xgb.XGBModel
    raise ValueError(f"XGB cost model {name!r}: choose xgb or xgb-ms")
