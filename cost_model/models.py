"""The cost model's modules (flax.nnx): a message-passing GNN over a `GraphBatch` that
predicts each graph's (normalised) log latency. Modules only: no data handling, no training.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cost_model.features import GLOBAL_DIM, NODE_DIM, GraphBatch

__all__ = ["MLP", "READOUTS", "CostGNN", "MessagePassing"]

READOUTS = ("pool", "additive")


class MLP(nnx.Module):
    """Dense layers with ReLU between them (none after the last)."""

    def __init__(self, sizes: tuple[int, ...], *, rngs: nnx.Rngs) -> None:
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i + 1 < len(self.layers):
                x = jax.nn.relu(x)
        return x


class MessagePassing(nnx.Module):
    """One round: messages along edges (producer -> consumer) and against them, summed per
    node with segment_sum, then a residual update and layer norm."""

    def __init__(self, hidden: int, *, rngs: nnx.Rngs) -> None:
        self.forward = nnx.Linear(2 * hidden, hidden, rngs=rngs)
        self.backward = nnx.Linear(2 * hidden, hidden, rngs=rngs)
        self.update = nnx.Linear(3 * hidden, hidden, rngs=rngs)
        self.norm = nnx.LayerNorm(hidden, rngs=rngs)

    def __call__(self, h: jax.Array, senders: jax.Array, receivers: jax.Array) -> jax.Array:
        n = h.shape[0]
        pair = jnp.concatenate([h[senders], h[receivers]], axis=-1)
        to_consumer = jax.ops.segment_sum(
            jax.nn.relu(self.forward(pair)), receivers, num_segments=n
        )
        to_producer = jax.ops.segment_sum(jax.nn.relu(self.backward(pair)), senders, num_segments=n)
        h = h + jax.nn.relu(self.update(jnp.concatenate([h, to_consumer, to_producer], -1)))
        return self.norm(h)


class CostGNN(nnx.Module):
    """Node embedding, `num_layers` rounds of message passing, sum and mean readout per
    graph together with the graph's globals, and an MLP to one number per graph."""

    def __init__(
        self,
        hidden: int = 64,
        num_layers: int = 3,
        readout_layers: int = 2,
        readout: str = "pool",
        task_context: bool = False,
        *,
        rngs: nnx.Rngs,
    ) -> None:
        if readout not in READOUTS:
            raise ValueError(f"readout {readout!r}: choose one of {', '.join(READOUTS)}")
        self.readout_kind = readout
        self.task_context = task_context
        self.embed = nnx.Linear(NODE_DIM, hidden, rngs=rngs)
        self.layers = nnx.List([MessagePassing(hidden, rngs=rngs) for _ in range(num_layers)])
        pooled = 2 * hidden + GLOBAL_DIM
        sizes = (2 * pooled if task_context else pooled,) + (hidden,) * (readout_layers - 1) + (1,)
        self.readout = MLP(sizes, rngs=rngs)
        if readout == "additive":
            node_sizes = (hidden + GLOBAL_DIM,) + (hidden,) * (readout_layers - 1) + (1,)
            self.node_time = MLP(node_sizes, rngs=rngs)

    def __call__(self, batch: GraphBatch, task: jax.Array | None = None) -> jax.Array:
        """(n_graph,) predictions; padding graphs' entries are meaningless.

        task: (n_graph,) task id of each graph, -1 for padding; None: every real graph is of
        one task (inference). Only the task-context readout reads it: each candidate's pooled
        embedding beside its difference from the mean over its task's candidates in the
        batch, so the readout sees how a schedule differs from the others of its task."""
        n_graph = batch.n_node.shape[0]
        mask = batch.node_mask[:, None].astype(jnp.float32)
        h = jax.nn.relu(self.embed(batch.nodes)) * mask
        for layer in self.layers:
            h = layer(h, batch.senders, batch.receivers) * mask
        total = jax.ops.segment_sum(h, batch.node_graph, num_segments=n_graph)
        count = jnp.maximum(batch.n_node, 1).astype(jnp.float32)[:, None]
        x = jnp.concatenate([total / 8.0, total / count, batch.globals], axis=-1)
        if self.task_context:
            if task is None:
                task = jnp.where(batch.graph_mask, 0, -1)
            same = ((task[:, None] == task[None, :]) & (task[:, None] >= 0)).astype(jnp.float32)
            mean = (same @ x) / jnp.maximum(same.sum(axis=1, keepdims=True), 1.0)
            x = jnp.concatenate([x, x - mean], axis=-1)
        pooled = self.readout(x)[:, 0]
        if self.readout_kind == "pool":
            return pooled
        # additive: a candidate's time is the sum of its stores' times. Each store node
        # predicts its log time; the graph's log time is their log-sum-exp, plus the pooled
        # readout as a correction.
        is_store = batch.nodes[:, 0] > 0.5  # the node-kind one-hot's "store" column
        node_in = jnp.concatenate([h, batch.globals[batch.node_graph]], axis=-1)
        log_t = self.node_time(node_in)[:, 0]
        log_t = jnp.where(is_store & (batch.node_mask > 0), log_t, -1e9)
        peak = jax.ops.segment_max(log_t, batch.node_graph, num_segments=n_graph)
        peak = jnp.where(jnp.isfinite(peak) & (peak > -1e8), peak, 0.0)
        summed = jax.ops.segment_sum(
            jnp.exp(log_t - peak[batch.node_graph]), batch.node_graph, num_segments=n_graph
        )
        return peak + jnp.log(jnp.maximum(summed, 1e-30)) + pooled
