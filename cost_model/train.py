"""Training: the loss, pure jitted step functions, and the training loop.

loss = pairwise ranking loss within each task (logistic loss on prediction differences of
every pair of candidates of the same task whose true latencies differ)
     + regression_weight * MSE on normalised log latency.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ago_search.measure.lease import host_cpu_lease
from cost_model.configs.default import Config
from cost_model.features import FeatureStats, GraphBatch
from cost_model.input_pipeline import (
    Batch,
    Dataset,
    TargetStats,
    inference_batches,
    normalise_dataset,
    training_batches,
)
from cost_model.metrics import TaskPrediction, evaluate_tasks
from cost_model.models import CostGNN

__all__ = [
    "TrainResult",
    "create_model",
    "evaluate",
    "loss_fn",
    "make_optimizer",
    "predict_normalised",
    "ranking_loss",
    "train",
    "train_step",
]

log = logging.getLogger(__name__)


def create_model(config: Config) -> CostGNN:
    return CostGNN(
        config.hidden,
        config.num_layers,
        config.readout_layers,
        config.readout,
        config.task_context,
        rngs=nnx.Rngs(config.seed),
    )


def make_optimizer(model: CostGNN, learning_rate: float, weight_decay: float) -> nnx.Optimizer:
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(learning_rate, weight_decay=weight_decay),
    )
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


def ranking_loss(
    pred: jax.Array,
    y: jax.Array,
    task: jax.Array,
    lambda_scale: float = 0.0,
    lambda_discount: bool = True,
) -> jax.Array:
    """Mean logistic loss over ordered pairs of the same task (task -1 is padding): for
    y_i < y_j, softplus(-(pred_j - pred_i)).

    lambda_scale > 0 weighs each pair LambdaRank-style by how much swapping the two would
    change the task's DCG under the current predictions: relevance exp(-lambda_scale x (y -
    the task's best y)) (with y in standard deviations of log latency, the candidate's speed
    relative to the task's best, sharpened), discount 1 / log2(1 + rank). Pairs that decide
    the top of the ranking then count most, which is what a search that measures only its
    top picks needs. lambda_discount=False leaves the discount out: each pair weighs the gap
    in relative speed alone (with lambda_scale the std of log latency, the gap in throughput
    relative to the task's best, the emphasis of MetaSchedule's XGB target)."""
    same = (task[:, None] == task[None, :]) & (task[:, None] >= 0)
    better = (y[:, None] + 1e-4 < y[None, :]) & same
    diff = pred[None, :] - pred[:, None]
    losses = jax.nn.softplus(-diff)
    if lambda_scale <= 0:
        count = jnp.maximum(better.sum(), 1)
        return jnp.where(better, losses, 0.0).sum() / count
    big = jnp.float32(1e9)
    y_best = jnp.min(jnp.where(same, y[None, :], big), axis=1)  # per row: its task's best
    rel = jnp.exp(-lambda_scale * (y - y_best))
    p = jax.lax.stop_gradient(pred)
    rank = 1.0 + jnp.sum(same & (p[None, :] < p[:, None]), axis=1)
    disc = 1.0 / jnp.log2(1.0 + rank)
    weight = jnp.abs(rel[:, None] - rel[None, :])
    if lambda_discount:
        weight = weight * jnp.abs(disc[:, None] - disc[None, :])
    weight = jnp.where(better, weight, 0.0)
    return (weight * losses).sum() / jnp.maximum(weight.sum(), 1e-9)


def loss_fn(
    model: CostGNN,
    graphs: GraphBatch,
    y: jax.Array,
    task: jax.Array,
    regression_weight: float,
    lambda_scale: float = 0.0,
    lambda_discount: bool = True,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    pred = model(graphs, task)
    rank = ranking_loss(pred, y, task, lambda_scale, lambda_discount)
    valid = (task >= 0).astype(jnp.float32)
    mse = ((pred - y) ** 2 * valid).sum() / jnp.maximum(valid.sum(), 1.0)
    return rank + regression_weight * mse, {"rank": rank, "mse": mse}


@nnx.jit(static_argnums=(5, 6, 7))
def train_step(
    model: CostGNN,
    optimizer: nnx.Optimizer,
    graphs: GraphBatch,
    y: jax.Array,
    task: jax.Array,
    regression_weight: float,
    lambda_scale: float = 0.0,
    lambda_discount: bool = True,
) -> dict[str, jax.Array]:
    """One optimisation step; returns the loss terms (before the step)."""
    grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
    (loss, aux), grads = grad_fn(
        model, graphs, y, task, regression_weight, lambda_scale, lambda_discount
    )
    optimizer.update(model, grads)
    return {"loss": loss, **aux}


@nnx.jit
def _forward(model: CostGNN, graphs: GraphBatch) -> jax.Array:
    return model(graphs)


def predict_normalised(model: CostGNN, graphs: list, batch_size: int = 256) -> np.ndarray:
    """The model's normalised log-latency predictions for standardised graphs (of one task
    when the model has a task-context readout: they are then scored in one batch, so each
    sees all the others)."""
    if getattr(model, "task_context", False):
        batch_size = max(batch_size, len(graphs))
    out = []
    for batch, n in inference_batches(graphs, batch_size):
        out.append(np.asarray(_forward(model, batch))[:n])
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def evaluate(
    model: CostGNN, dataset: Dataset, target_stats: TargetStats
) -> dict[str, float | None]:
    """Metrics of the model on an already standardised dataset, per task, task-weighted."""
    preds = []
    lease = host_cpu_lease()
    for task in dataset.tasks:
        with lease.shared():
            y = predict_normalised(model, list(task.graphs))
        log_latency = target_stats.denormalise(y)
        preds.append(
            TaskPrediction(
                task.task_key, task.latencies, log_latency, np.exp(log_latency), task.weight
            )
        )
    return evaluate_tasks(preds)


@dataclass(frozen=True)
class TrainResult:
    model: CostGNN
    feature_stats: FeatureStats
    target_stats: TargetStats
    history: list[dict[str, float]]
    seconds: float


def train(
    config: Config,
    train_set: Dataset,
    eval_set: Dataset | None = None,
    on_eval: Callable[[int, dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Fit a fresh model on `train_set` (raw graphs; the standardisation is fit here)."""
    started = time.perf_counter()
    feature_stats = FeatureStats.fit(train_set.all_graphs(), config.feature_squash)
    target_stats = TargetStats.fit(train_set)
    train_norm = normalise_dataset(train_set, feature_stats)
    eval_norm = normalise_dataset(eval_set, feature_stats) if eval_set is not None else None
    model = create_model(config)
    optimizer = make_optimizer(model, config.learning_rate, config.weight_decay)
    batches = training_batches(
        train_norm,
        target_stats,
        np.random.default_rng(config.seed),
        config.tasks_per_batch,
        config.candidates_per_task,
    )
    history: list[dict[str, float]] = []
    window: list[dict[str, float]] = []
    lease = host_cpu_lease()
    for step in range(1, config.num_steps + 1):
        batch: Batch = next(batches)
        # a step at a time under the host's shared lease: a collection or tuning run on this
        # machine never measures while training computes (float() waits for the step)
        with lease.shared():
            terms = train_step(
                model,
                optimizer,
                batch.graphs,
                batch.y,
                batch.task,
                config.regression_weight,
                config.lambda_scale,
                config.lambda_discount,
            )
            window.append({k: float(v) for k, v in terms.items()})
        if step % config.eval_every == 0 or step == config.num_steps:
            row: dict[str, Any] = {
                "step": step,
                **{k: float(np.mean([w[k] for w in window])) for k in window[0]},
            }
            window = []
            if eval_norm is not None and eval_norm.tasks:
                row["eval"] = evaluate(model, eval_norm, target_stats)
            history.append(row)
            log.info("step %d: %s", step, row)
            if on_eval is not None:
                on_eval(step, row)
    return TrainResult(model, feature_stats, target_stats, history, time.perf_counter() - started)


def fine_tune(
    model: CostGNN,
    optimizer: nnx.Optimizer,
    batches: list[Batch],
    regression_weight: float,
    lambda_scale: float = 0.0,
    lambda_discount: bool = True,
) -> list[float]:
    """Steps over given batches (the online update of the MetaSchedule plug-in), with the
    loss the model was trained with."""
    return [
        float(
            train_step(
                model,
                optimizer,
                b.graphs,
                b.y,
                b.task,
                regression_weight,
                lambda_scale,
                lambda_discount,
            )["loss"]
        )
        for b in batches
    ]
