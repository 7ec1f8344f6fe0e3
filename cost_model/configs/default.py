"""The default cost-model configuration: a small message-passing GNN, trained with a ranking
loss within tasks plus a regression loss on log latency."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = ["Config", "get_config"]


@dataclass(frozen=True)
class Config:
    # model
    hidden: int = 64
    num_layers: int = 3
    readout_layers: int = 2
    readout: str = "additive"  # "pool" (sum and mean of nodes) or "additive" (sum of store times)
    # the pooled readout also sees each candidate's difference from its task's mean candidate
    task_context: bool = False
    # optimisation
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    num_steps: int = 1500
    tasks_per_batch: int = 8
    candidates_per_task: int = 32
    # loss = pairwise ranking within a task + regression_weight * MSE(normalised log latency)
    regression_weight: float = 0.1
    # > 0: LambdaRank weights on the ranking pairs (train.ranking_loss), 0: plain pairwise
    lambda_scale: float = 0.0
    # with lambda_scale > 0: True weighs pairs by the change in DCG (LambdaRank), False by the
    # gap in relative speed alone (train.ranking_loss; lambda_scale 2.0, about the std of log
    # latency on the host traces, then weighs pairs by their gap in throughput relative to the
    # task's best)
    lambda_discount: bool = True
    # features: standardised columns squashed into (-feature_squash, feature_squash), 0: off
    feature_squash: float = 4.0
    # evaluation and data
    eval_every: int = 100
    seed: int = 0
    # online update (MetaSchedule plug-in): steps of fine-tuning per `update` call
    online_steps: int = 10
    online_learning_rate: float = 5e-4

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Config:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        # models saved before these options existed were trained without them
        known.setdefault("readout", "pool")
        known.setdefault("lambda_scale", 0.0)
        known.setdefault("lambda_discount", True)
        known.setdefault("feature_squash", 0.0)
        known.setdefault("task_context", False)
        return cls(**known)

    def replace(self, **changes: Any) -> Config:
        return replace(self, **changes)


def get_config() -> Config:
    return Config()
