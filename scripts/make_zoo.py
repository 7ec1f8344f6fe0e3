"""Generate the ago-search model zoo: small, realistic ONNX models with random weights.

Why this exists: the optimizer must be tested on the graphs that real exporters produce
(BN folded into Conv, Shape -> Gather -> Concat -> Reshape chains, Resize with run-time sizes,
Split/Transpose channel shuffles, attention written as MatMul/Softmax), but nothing may be
downloaded. So the architectures are written by hand in torch, given random weights from fixed
seeds and exported offline with BOTH torch exporters (the TorchScript "legacy" one and the
torch.export-based "dynamo" one), plus one model built with plain ``onnx.helper``.

Every model is checked with ``onnx.checker`` (full check), run in onnxruntime and compared with
the torch (or numpy) reference before it is written; a mismatch raises ``ZooError``.

Usage::

    python scripts/make_zoo.py [--out datasets/zoo] [--models a,b,...] [--force]

or, from Python (e.g. tests), with ``scripts/`` on ``sys.path``::

    from make_zoo import ZOO_MODELS, make_zoo
    manifest = make_zoo("datasets/zoo", models=["mlp"])

Models whose manifest entry has the current ``GENERATOR_VERSION`` and whose file still has the
recorded sha256 are skipped unless ``force`` is set, so repeated calls are cheap.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import io
import json
import logging
import math
import os
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

# Bump when a model definition, its weights, the export settings or the manifest format change:
# entries with another version are regenerated.
GENERATOR_VERSION = "1"
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "datasets" / "zoo"

EXPORTER_LEGACY = "torch-legacy"
EXPORTER_DYNAMO = "torch-dynamo"
EXPORTER_HELPER = "onnx-helper"

LOG = logging.getLogger("make_zoo")


class ZooError(RuntimeError):
    """A model could not be generated or failed its verification (never silently skipped)."""


# --------------------------------------------------------------------------------------------
# Shared building blocks
# --------------------------------------------------------------------------------------------


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) + BatchNorm + optional activation: the basic unit of all the CNNs."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int = 3,
        stride: int = 1,
        groups: int = 1,
        act: type[nn.Module] | None = nn.ReLU,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act is not None:
            layers.append(act(inplace=True))
        super().__init__(*layers)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs + identity or 1x1 projection shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(cin, cout, 3, stride)
        self.conv2 = ConvBNAct(cout, cout, 3, 1, act=None)
        self.downsample: nn.Module = (
            ConvBNAct(cin, cout, 1, stride, act=None)
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.downsample(x))


def _resnet_stage(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
    """A ResNet stage: the first block changes resolution/width, the others keep them."""
    layers = [BasicBlock(cin, cout, stride)]
    layers += [BasicBlock(cout, cout) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------------------------
# CNN classifiers
# --------------------------------------------------------------------------------------------


class ResNet18(nn.Module):
    """torchvision-like ResNet-18 (7x7 stem, max pool, 4 stages of 2 basic blocks, FC 1000)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = ConvBNAct(3, 64, 7, 2)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = _resnet_stage(64, 64, 2, 1)
        self.layer2 = _resnet_stage(64, 128, 2, 2)
        self.layer3 = _resnet_stage(128, 256, 2, 2)
        self.layer4 = _resnet_stage(256, 512, 2, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.stem(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection, skip if shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNAct(cin, hidden, 1, act=nn.ReLU6))
        layers.append(ConvBNAct(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6))
        layers.append(ConvBNAct(hidden, cout, 1, act=None))
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision-like MobileNetV2, width 1.0 (ReLU6 -> Clip, depthwise convs, 1280 head)."""

    # expansion t, channels c, repeats n, first stride s
    SETTINGS = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNAct(3, 32, 3, 2, act=nn.ReLU6)]
        cin = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(ConvBNAct(cin, 1280, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


class Fire(nn.Module):
    """SqueezeNet Fire module: 1x1 squeeze, then parallel 1x1 / 3x3 expands concatenated."""

    def __init__(self, cin: int, squeeze: int, expand1: int, expand3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.expand1 = nn.Conv2d(squeeze, expand1, 1)
        self.expand3 = nn.Conv2d(squeeze, expand3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.squeeze(x))
        return torch.cat([F.relu(self.expand1(x)), F.relu(self.expand3(x))], 1)


class SqueezeNet11(nn.Module):
    """SqueezeNet 1.1 (no BatchNorm; ceil-mode max pools; conv classifier + global avg pool)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 3, 2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(64, 16, 64, 64),
            Fire(128, 16, 64, 64),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(128, 32, 128, 128),
            Fire(256, 32, 128, 128),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(256, 48, 192, 192),
            Fire(384, 48, 192, 192),
            Fire(384, 64, 256, 256),
            Fire(512, 64, 256, 256),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(0.5),
            nn.Conv2d(512, num_classes, 1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet channel shuffle; exports as Reshape -> Transpose -> Reshape."""
    b, c, h, w = x.shape
    x = x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous()
    return x.view(b, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit: channel split (stride 1) or two branches (stride 2), concat, shuffle."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        mid = cout // 2
        if stride > 1:
            self.branch1: nn.Module = nn.Sequential(
                ConvBNAct(cin, cin, 3, stride, groups=cin, act=None),
                ConvBNAct(cin, mid, 1),
            )
        else:
            self.branch1 = nn.Identity()
        branch2_in = cin if stride > 1 else mid
        self.branch2 = nn.Sequential(
            ConvBNAct(branch2_in, mid, 1),
            ConvBNAct(mid, mid, 3, stride, groups=mid, act=None),
            ConvBNAct(mid, mid, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat([x1, self.branch2(x2)], 1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], 1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """torchvision-like ShuffleNetV2 x1.0 (stages 4/8/4, widths 116/232/464, conv5 1024)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        widths = (24, 116, 232, 464, 1024)
        self.conv1 = ConvBNAct(3, widths[0], 3, 2)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages: list[nn.Module] = []
        cin = widths[0]
        for repeats, cout in zip((4, 8, 4), widths[1:4], strict=True):
            units = [ShuffleUnit(cin, cout, 2)]
            units += [ShuffleUnit(cout, cout, 1) for _ in range(repeats - 1)]
            stages.append(nn.Sequential(*units))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.conv5 = ConvBNAct(cin, widths[4], 1)
        self.fc = nn.Linear(widths[4], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv5(self.stages(self.maxpool(self.conv1(x))))
        return self.fc(x.mean([2, 3]))


# --------------------------------------------------------------------------------------------
# DBNet text detector
# --------------------------------------------------------------------------------------------


class DBNet(nn.Module):
    """DBNet-style detector: ResNet-like backbone (4 scales), FPN, concat, transposed-conv head.

    Top-down FPN upsampling uses ``size=lateral.shape[-2:]`` (nearest), so with dynamic H/W the
    exported Resize takes its sizes from Shape chains; the concat upsampling uses bilinear
    ``scale_factor``. Input H and W must be multiples of 32; output is a 1xHxW probability map.
    """

    def __init__(self, widths: Sequence[int] = (32, 64, 128, 256), inner: int = 128) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            ConvBNAct(3, 32, 3, 2), ConvBNAct(32, 32, 3, 1), nn.MaxPool2d(3, 2, 1)
        )
        cins = (32, *widths[:-1])
        self.stages = nn.ModuleList(
            _resnet_stage(cin, cout, 2, 1 if i == 0 else 2)
            for i, (cin, cout) in enumerate(zip(cins, widths, strict=True))
        )
        self.lateral = nn.ModuleList(nn.Conv2d(c, inner, 1, bias=False) for c in widths)
        self.smooth = nn.ModuleList(
            nn.Conv2d(inner, inner // 4, 3, padding=1, bias=False) for _ in widths
        )
        self.head = nn.Sequential(
            ConvBNAct(inner, inner // 4, 3),
            nn.ConvTranspose2d(inner // 4, inner // 4, 2, 2),
            nn.BatchNorm2d(inner // 4),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(inner // 4, 1, 2, 2),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        lat = [conv(f) for conv, f in zip(self.lateral, feats, strict=True)]
        # top-down pathway: upsample the coarser map to the finer one's run-time size and add
        for i in range(len(lat) - 2, -1, -1):
            lat[i] = lat[i] + F.interpolate(lat[i + 1], size=lat[i].shape[-2:], mode="nearest")
        outs = [conv(t) for conv, t in zip(self.smooth, lat, strict=True)]
        ups = [outs[0]] + [
            F.interpolate(o, scale_factor=2**i, mode="bilinear", align_corners=False)
            for i, o in enumerate(outs[1:], start=1)
        ]
        return self.head(torch.cat(ups[::-1], 1))


# --------------------------------------------------------------------------------------------
# Transformers
# --------------------------------------------------------------------------------------------


class BertSelfAttention(nn.Module):
    """BERT self-attention written the HF way: view to heads from x.size(), permute, matmuls.

    Taking the head shapes from ``x.size()`` is what makes the legacy exporter emit
    Shape -> Gather -> Unsqueeze -> Concat -> Reshape chains when the sequence is dynamic.
    """

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.output = nn.Linear(hidden, hidden)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(x.size()[:-1] + (self.heads, self.head_dim))
        return x.permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self._split_heads(self.query(x))
        k = self._split_heads(self.key(x))
        v = self._split_heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        ctx = torch.matmul(scores.softmax(dim=-1), v).permute(0, 2, 1, 3).contiguous()
        ctx = ctx.view(ctx.size()[:-2] + (self.heads * self.head_dim,))
        return self.output(ctx)


class BertLayer(nn.Module):
    """Post-norm BERT encoder layer: attention + residual + LN, GELU FFN + residual + LN."""

    def __init__(self, hidden: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.attention = BertSelfAttention(hidden, heads)
        self.attention_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.intermediate = nn.Linear(hidden, ffn)
        self.ffn_output = nn.Linear(ffn, hidden)
        self.output_norm = nn.LayerNorm(hidden, eps=1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention_norm(x + self.attention(x))
        return self.output_norm(x + self.ffn_output(F.gelu(self.intermediate(x))))


class BertTiny(nn.Module):
    """Tiny BERT encoder: word + position embeddings, LN, encoder layers; returns hidden states."""

    def __init__(
        self,
        vocab: int = 1000,
        hidden: int = 128,
        layers: int = 2,
        heads: int = 2,
        ffn: int = 512,
        max_positions: int = 128,
    ) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden)
        self.position_embeddings = nn.Embedding(max_positions, hidden)
        self.embedding_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.layers = nn.ModuleList(BertLayer(hidden, heads, ffn) for _ in range(layers))
        # HF style: a position-id buffer sliced to the run-time sequence length (Slice from Shape)
        self.register_buffer(
            "position_ids", torch.arange(max_positions).unsqueeze(0), persistent=False
        )
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = self.position_ids[:, : input_ids.size(1)]
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        x = self.embedding_norm(x)
        for layer in self.layers:
            x = layer(x)
        return x


class ViTBlock(nn.Module):
    """Pre-norm ViT block (timm style): fused qkv Linear, reshape/permute/unbind, GELU MLP."""

    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, mlp)
        self.fc2 = nn.Linear(mlp, dim)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViTTiny(nn.Module):
    """Small ViT: 16x16 conv patch embedding, cls token + learned positions, blocks, LN, head."""

    def __init__(
        self,
        image: int = 224,
        patch: int = 16,
        dim: int = 192,
        depth: int = 4,
        heads: int = 3,
        mlp: int = 768,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (image // patch) ** 2 + 1, dim))
        self.blocks = nn.Sequential(*(ViTBlock(dim, heads, mlp) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


# --------------------------------------------------------------------------------------------
# onnx.helper model
# --------------------------------------------------------------------------------------------


def build_mlp_onnx(seed: int) -> tuple[onnx.ModelProto, Callable[[dict[str, np.ndarray]], list]]:
    """A 3-layer MLP built with plain onnx.helper (MatMul+Add, Gemm transB, Softmax), opset 15.

    Returns the model and a numpy reference implementation to check onnxruntime against.
    """
    rng = np.random.default_rng(seed)

    def dense(cin: int, cout: int) -> tuple[np.ndarray, np.ndarray]:
        w = (rng.standard_normal((cin, cout)) * math.sqrt(2.0 / cin)).astype(np.float32)
        return w, (rng.standard_normal(cout) * 0.1).astype(np.float32)

    w1, b1 = dense(256, 512)
    w2, b2 = dense(512, 256)
    w3, b3 = dense(256, 10)
    w2t = np.ascontiguousarray(w2.T)  # stored [out, in] and used with Gemm transB=1
    inits = [
        numpy_helper.from_array(a, n)
        for a, n in ((w1, "fc1.weight"), (b1, "fc1.bias"), (w2t, "fc2.weight"))
    ] + [
        numpy_helper.from_array(a, n)
        for a, n in ((b2, "fc2.bias"), (w3, "fc3.weight"), (b3, "fc3.bias"))
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "fc1.weight"], ["fc1.mm"], name="fc1/MatMul"),
        helper.make_node("Add", ["fc1.mm", "fc1.bias"], ["fc1.out"], name="fc1/Add"),
        helper.make_node("Relu", ["fc1.out"], ["act1"], name="act1"),
        helper.make_node(
            "Gemm", ["act1", "fc2.weight", "fc2.bias"], ["fc2.out"], name="fc2", transB=1
        ),
        helper.make_node("Relu", ["fc2.out"], ["act2"], name="act2"),
        helper.make_node("Gemm", ["act2", "fc3.weight", "fc3.bias"], ["logits"], name="fc3"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 10])],
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 15)], producer_name="ago-search make_zoo"
    )
    model.ir_version = 8

    def reference(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        h = np.maximum(feeds["x"].astype(np.float64) @ w1 + b1, 0.0)
        h = np.maximum(h @ w2 + b2, 0.0)
        logits = h @ w3 + b3
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return [(e / e.sum(axis=-1, keepdims=True)).astype(np.float32)]

    return model, reference


# --------------------------------------------------------------------------------------------
# Zoo specification
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputSpec:
    """One graph input: the concrete shape to use, dtype, and the value range for ints."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    # integer inputs are drawn from [0, high): token ids must stay inside the vocabulary
    high: int | None = None


@dataclass(frozen=True)
class ModelSpec:
    """How one zoo model is built, exported and verified."""

    name: str
    description: str
    exporter: str
    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...]
    seed: int
    # the ai.onnx opset asked from the exporter; None = the exporter's default
    opset: int | None = None
    build_torch: Callable[[], nn.Module] | None = None
    build_onnx: Callable[[int], tuple[onnx.ModelProto, Callable]] | None = None
    # legacy exporter only: symbolic axes, e.g. {"input": {2: "height"}}
    dynamic_axes: dict[str, dict[int, str]] | None = None
    # other concrete shapes to verify a dynamic-shape export with (torch vs onnxruntime)
    extra_shapes: tuple[dict[str, tuple[int, ...]], ...] = ()
    # allowed max |ort - ref| relative to max |ref|
    tol: float = 1e-4


_IMAGE_224 = (InputSpec("input", (1, 3, 224, 224)),)

SPECS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec(
            name="mlp",
            description="3-layer MLP built with onnx.helper (MatMul+Add, Gemm, Softmax)",
            exporter=EXPORTER_HELPER,
            opset=15,
            inputs=(InputSpec("x", (1, 256)),),
            outputs=("probs",),
            seed=100,
            build_onnx=build_mlp_onnx,
        ),
        ModelSpec(
            name="resnet18",
            description="torchvision-like ResNet-18 classifier, 224x224",
            exporter=EXPORTER_LEGACY,
            opset=17,
            inputs=_IMAGE_224,
            outputs=("logits",),
            seed=101,
            build_torch=ResNet18,
        ),
        ModelSpec(
            name="mobilenetv2",
            description="torchvision-like MobileNetV2 (width 1.0) classifier, 224x224",
            exporter=EXPORTER_DYNAMO,
            opset=18,  # the others take the dynamo default (20)
            inputs=_IMAGE_224,
            outputs=("logits",),
            seed=102,
            build_torch=MobileNetV2,
        ),
        ModelSpec(
            name="squeezenet",
            description="SqueezeNet 1.1 classifier (Fire modules, concat), 224x224",
            exporter=EXPORTER_DYNAMO,
            inputs=_IMAGE_224,
            outputs=("logits",),
            seed=103,
            build_torch=SqueezeNet11,
        ),
        ModelSpec(
            name="shufflenet",
            description="ShuffleNetV2 x1.0 classifier (split, concat, reshape/transpose shuffle)",
            exporter=EXPORTER_DYNAMO,
            inputs=_IMAGE_224,
            outputs=("logits",),
            seed=104,
            build_torch=ShuffleNetV2,
        ),
        ModelSpec(
            name="dbnet",
            description=(
                "DBNet-style text detector (ResNet-like backbone, FPN with Resize, "
                "ConvTranspose head, sigmoid); dynamic height/width, multiples of 32"
            ),
            exporter=EXPORTER_LEGACY,
            opset=13,
            inputs=(InputSpec("input", (1, 3, 320, 320)),),
            outputs=("prob",),
            seed=105,
            build_torch=DBNet,
            dynamic_axes={"input": {2: "height", 3: "width"}, "prob": {2: "height", 3: "width"}},
            extra_shapes=({"input": (1, 3, 256, 416)},),
        ),
        ModelSpec(
            name="bert_tiny",
            description=(
                "tiny BERT encoder (vocab 1000, 2 layers, hidden 128, 2 heads, FFN 512); "
                "dynamic sequence length, last hidden state"
            ),
            exporter=EXPORTER_LEGACY,
            opset=13,
            inputs=(InputSpec("input_ids", (1, 64), "int64", high=1000),),
            outputs=("last_hidden_state",),
            seed=106,
            build_torch=BertTiny,
            dynamic_axes={"input_ids": {1: "sequence"}, "last_hidden_state": {1: "sequence"}},
            extra_shapes=({"input_ids": (1, 32)},),
        ),
        ModelSpec(
            name="vit_tiny",
            description="small ViT (patch 16, dim 192, depth 4, 3 heads, MLP 768), 224x224",
            exporter=EXPORTER_DYNAMO,
            inputs=_IMAGE_224,
            outputs=("logits",),
            seed=107,
            build_torch=ViTTiny,
        ),
    )
}

ZOO_MODELS: list[str] = list(SPECS)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def make_inputs(
    inputs: dict[str, Sequence[int]],
    dtypes: dict[str, str],
    ranges: dict[str, Sequence[int]] | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Deterministic random feeds for a manifest entry (floats ~ N(0,1), ints in their range).

    Call as ``make_inputs(e["inputs"], e["input_dtypes"], e.get("input_ranges"))``; integer
    inputs without a range get [0, 2).
    """
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for name, shape in inputs.items():
        dtype = np.dtype(dtypes[name])
        if np.issubdtype(dtype, np.integer):
            low, high = (ranges or {}).get(name, (0, 2))
            feeds[name] = rng.integers(low, high, size=tuple(shape), dtype=dtype)
        else:
            feeds[name] = rng.standard_normal(tuple(shape)).astype(dtype)
    return feeds


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed (the manifest uses it to detect stale or edited files)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def declared_shapes(values: Sequence[onnx.ValueInfoProto]) -> dict[str, list[int | str]]:
    """Shapes as declared in the file: ints for fixed dims, names (or "?") for symbolic ones."""
    out: dict[str, list[int | str]] = {}
    for v in values:
        dims = v.type.tensor_type.shape.dim
        out[v.name] = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims
        ]
    return out


def has_symbolic_dims(model: onnx.ModelProto) -> bool:
    """True if any graph input or output has a dimension that is not a fixed integer."""
    shapes = declared_shapes([*model.graph.input, *model.graph.output])
    return any(isinstance(d, str) for dims in shapes.values() for d in dims)


def ai_onnx_opset(model: onnx.ModelProto) -> int:
    """The default-domain (ai.onnx) opset version the file imports."""
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return op.version
    raise ZooError("model imports no ai.onnx opset")


def _ort_session(model_bytes: bytes) -> ort.InferenceSession:
    """A single-threaded CPU session: the machine is shared, and one thread is deterministic."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def _compare(name: str, what: str, got: list, want: list, tol: float) -> float:
    """Max |got - want| / max |want| over outputs; raises ZooError above ``tol``."""
    worst = 0.0
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if g.shape != w.shape:
            raise ZooError(f"{name}: {what}: output {i} shape {g.shape} != reference {w.shape}")
        scale = max(float(np.abs(w).max()), 1e-6)
        err = float(np.abs(g.astype(np.float64) - w.astype(np.float64)).max()) / scale
        if not np.isfinite(err) or err > tol:
            raise ZooError(
                f"{name}: {what}: onnxruntime differs from the reference on output {i}: "
                f"max|diff|/max|ref| = {err:.3g} > {tol:g} (max|ref| = {scale:.3g})"
            )
        worst = max(worst, err)
    return worst


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Temporarily limit torch's intra-op threads (shared 2-core machine; reproducible sums)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _randomize_batchnorm(model: nn.Module, calib: torch.Tensor) -> None:
    """Give every BatchNorm a random affine and realistic, non-identity running statistics.

    gamma/beta are drawn at random; running mean/var are then measured on a random batch
    (momentum=None: exact batch statistics), so activations stay O(1) through deep nets and the
    onnxruntime comparison is meaningful. The pass runs in float64 and is cast back, so the
    float32 statistics do not depend on the CPU's conv kernels (reproducible files).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    with torch.no_grad():
        for bn in bns:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0.0, 0.1)
            bn.reset_running_stats()
            bn.momentum = None
        model.double().eval()
        for bn in bns:
            bn.train()
        model(calib.double())
        model.float().eval()
        for bn in bns:
            bn.momentum = 0.1
            bn.running_var.clamp_(min=1e-3)


def _build_torch_model(spec: ModelSpec) -> nn.Module:
    """Instantiate the spec's module with seeded weights, calibrated BN, in eval mode."""
    assert spec.build_torch is not None
    torch.manual_seed(spec.seed)
    model = spec.build_torch()
    first = spec.inputs[0]
    if first.dtype == "float32":
        calib_shape = (2, *first.shape[1:])
        _randomize_batchnorm(model, torch.randn(calib_shape))
    return model.eval()


def _export_torch(spec: ModelSpec, model: nn.Module, args: tuple, path: Path) -> list[str]:
    """Export with the spec's torch exporter to ``path``; returns the warnings it raised.

    The dynamo exporter prints progress on stdout; that is captured and logged at debug level.
    """
    names = [i.name for i in spec.inputs]
    stdout = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(stdout):
        warnings.simplefilter("always")
        if spec.exporter == EXPORTER_LEGACY:
            torch.onnx.export(
                model,
                args,
                str(path),
                dynamo=False,
                opset_version=spec.opset,
                input_names=names,
                output_names=list(spec.outputs),
                dynamic_axes=spec.dynamic_axes,
                do_constant_folding=True,
            )
        elif spec.exporter == EXPORTER_DYNAMO:
            torch.onnx.export(
                model,
                args,
                str(path),
                dynamo=True,
                opset_version=spec.opset,
                input_names=names,
                output_names=list(spec.outputs),
                external_data=False,
                verbose=False,
            )
        else:
            raise ZooError(f"{spec.name}: unknown torch exporter {spec.exporter!r}")
    if stdout.getvalue().strip():
        LOG.debug("%s exporter output:\n%s", spec.name, stdout.getvalue().rstrip())
    seen: list[str] = []
    for w in caught:
        text = f"{w.category.__name__}: {str(w.message).splitlines()[0][:160]}"
        if text not in seen:
            seen.append(text)
    return seen


def _generate(spec: ModelSpec, out_dir: Path) -> dict[str, Any]:
    """Build, export, check and verify one model; writes ``<name>.onnx``, returns its entry."""
    t0 = time.perf_counter()
    dtypes = {i.name: i.dtype for i in spec.inputs}
    ranges = {i.name: [0, i.high] for i in spec.inputs if i.high is not None}
    shapes = {i.name: list(i.shape) for i in spec.inputs}
    feeds = make_inputs(shapes, dtypes, ranges, seed=spec.seed)
    checks: list[dict[str, np.ndarray]] = [feeds]
    for k, extra in enumerate(spec.extra_shapes, start=1):
        checks.append(make_inputs(extra, dtypes, ranges, seed=spec.seed + k))

    export_warnings: list[str] = []
    with tempfile.TemporaryDirectory(prefix=f"zoo-{spec.name}-") as tmp:
        raw = Path(tmp) / f"{spec.name}.onnx"
        if spec.build_onnx is not None:
            proto, reference = spec.build_onnx(spec.seed)
            t_export = time.perf_counter()
            onnx.save_model(proto, str(raw))
            export_s = time.perf_counter() - t_export
            param_count = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
            references = [reference(f) for f in checks]
        else:
            model = _build_torch_model(spec)
            param_count = sum(p.numel() for p in model.parameters())
            references = [_torch_reference(model, spec, f) for f in checks]
            args = tuple(torch.from_numpy(feeds[i.name]) for i in spec.inputs)
            t_export = time.perf_counter()
            with torch.no_grad():
                export_warnings = _export_torch(spec, model, args, raw)
            export_s = time.perf_counter() - t_export
        # onnx.load pulls in external data if an exporter wrote any; the saved file is
        # self-contained.
        proto = onnx.load(str(raw))
    _normalize_metadata(proto)

    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ZooError(f"{spec.name}: onnx.checker (full_check) failed: {e}") from e

    # the exact bytes onnx.save_model(..., save_as_external_data=False) would write
    model_bytes = proto.SerializeToString()
    max_err = 0.0
    try:
        session = _ort_session(model_bytes)
        for k, (f, ref) in enumerate(zip(checks, references, strict=True)):
            got = session.run(list(spec.outputs), f)
            what = "manifest shapes" if k == 0 else f"extra shapes {spec.extra_shapes[k - 1]}"
            max_err = max(max_err, _compare(spec.name, what, got, ref, spec.tol))
    except ort.capi.onnxruntime_pybind11_state.Fail as e:  # type: ignore[attr-defined]
        raise ZooError(f"{spec.name}: onnxruntime failed: {e}") from e

    # only verified models reach the output directory, and atomically
    final = out_dir / f"{spec.name}.onnx"
    partial = out_dir / f".{spec.name}.partial.onnx"
    partial.write_bytes(model_bytes)
    os.replace(partial, final)

    out_shapes = {n: list(r.shape) for n, r in zip(spec.outputs, references[0], strict=True)}
    out_dtypes = {n: str(r.dtype) for n, r in zip(spec.outputs, references[0], strict=True)}
    entry: dict[str, Any] = {
        "file": final.name,
        "description": spec.description,
        "exporter": spec.exporter,
        "opset": ai_onnx_opset(proto),
        "ir_version": proto.ir_version,
        "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
        "inputs": shapes,
        "input_dtypes": dtypes,
        "input_ranges": ranges,
        "outputs": out_shapes,
        "output_dtypes": out_dtypes,
        "declared_inputs": declared_shapes(proto.graph.input),
        "declared_outputs": declared_shapes(proto.graph.output),
        "symbolic_dims": has_symbolic_dims(proto),
        "extra_shapes_verified": [
            {n: list(s) for n, s in extra.items()} for extra in spec.extra_shapes
        ],
        "param_count": int(param_count),
        "num_nodes": len(proto.graph.node),
        "op_counts": dict(sorted(Counter(n.op_type for n in proto.graph.node).items())),
        "seed": spec.seed,
        "generator_version": GENERATOR_VERSION,
        "torch_version": torch.__version__ if spec.build_torch is not None else None,
        "onnx_version": onnx.__version__,
        "onnxruntime_version": ort.__version__,
        "export_seconds": round(export_s, 2),
        "total_seconds": round(time.perf_counter() - t0, 2),
        "export_warnings": export_warnings,
        "max_rel_error": float(f"{max_err:.3g}"),
        "size_bytes": len(model_bytes),
        "sha256": hashlib.sha256(model_bytes).hexdigest(),
    }
    return entry


def _normalize_metadata(model: onnx.ModelProto) -> None:
    """Make the dynamo exporter's per-node metadata independent of where and how we run.

    It records Python stack traces (absolute paths and line numbers of this script and of
    site-packages) and qualified class names (``__main__.ResNet18`` when run as a script,
    ``make_zoo.ResNet18`` when imported). Both would change the file's sha256 for no reason, so
    stack traces are dropped and this module's name is written as ``make_zoo``. The module
    hierarchy metadata (namespace, class_hierarchy, name_scopes) is kept: real exports have it.
    """
    prefix = f"{__name__}."

    def clean(props: Any) -> None:
        kept = [(p.key, p.value.replace(prefix, "make_zoo.")) for p in props if p.key != _STACK]
        del props[:]
        for key, value in kept:
            props.add(key=key, value=value)

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            clean(node.metadata_props)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                for sub in attr.graphs:
                    walk(sub)

    walk(model.graph)


_STACK = "pkg.torch.onnx.stack_trace"


def _torch_reference(
    model: nn.Module, spec: ModelSpec, feeds: dict[str, np.ndarray]
) -> list[np.ndarray]:
    """The eager torch outputs for ``feeds``: what onnxruntime must reproduce."""
    with torch.no_grad():
        out = model(*(torch.from_numpy(feeds[i.name]) for i in spec.inputs))
    outs = (out,) if isinstance(out, torch.Tensor) else tuple(out)
    return [t.numpy() for t in outs]


def _is_current(entry: dict[str, Any] | None, out_dir: Path) -> bool:
    """An entry can be reused if it is from this generator version and its file is intact."""
    if not entry or entry.get("generator_version") != GENERATOR_VERSION:
        return False
    path = out_dir / str(entry.get("file", ""))
    return path.is_file() and sha256_file(path) == entry.get("sha256")


def load_manifest(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest in ``out_dir``, or an empty one if it is missing or unreadable."""
    path = Path(out_dir) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return _empty_manifest()
    if not isinstance(data, dict) or data.get("format_version") != MANIFEST_FORMAT:
        return _empty_manifest()
    data.setdefault("models", {})
    return data


def _empty_manifest() -> dict[str, Any]:
    return {"format_version": MANIFEST_FORMAT, "generator": "scripts/make_zoo.py", "models": {}}


def _write_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    """Atomic write (temp file + rename) so readers never see a half-written manifest."""
    tmp = out_dir / f".{MANIFEST_NAME}.partial"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out_dir / MANIFEST_NAME)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Exclusive flock on the output directory itself: concurrent generators (a test run and a
    manual run) serialize instead of interleaving, and no lock file is left behind."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def make_zoo(
    out_dir: str | os.PathLike = DEFAULT_OUT,
    models: Sequence[str] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Generate the requested models (all if None) into ``out_dir``; return the manifest.

    Up-to-date models are skipped unless ``force``. The manifest is rewritten after each model,
    so an interrupted run keeps what it finished. Raises ``ZooError`` if a model fails its
    checks and ``ValueError`` for unknown names.
    """
    names = list(ZOO_MODELS if models is None else models)
    unknown = [n for n in names if n not in SPECS]
    if unknown:
        raise ValueError(f"unknown zoo model(s) {unknown}; known: {', '.join(ZOO_MODELS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _locked(out), _torch_threads(1), torch.random.fork_rng():
        manifest = load_manifest(out)
        # keep known models only, in zoo order
        old = manifest["models"]
        manifest["models"] = {n: old[n] for n in ZOO_MODELS if n in old}
        for name in names:
            if not force and _is_current(manifest["models"].get(name), out):
                LOG.info("%-12s up to date, skipped", name)
                continue
            spec = SPECS[name]
            LOG.info(
                "%-12s generating (%s, opset %s)", name, spec.exporter, spec.opset or "default"
            )
            entry = _generate(spec, out)
            manifest["models"][name] = entry
            manifest["models"] = {
                n: manifest["models"][n] for n in ZOO_MODELS if n in manifest["models"]
            }
            _write_manifest(out, manifest)
            LOG.info(
                "%-12s ok: opset %d, %.1f MB, %d params, export %.1fs, max rel err %.2g%s",
                name,
                entry["opset"],
                entry["size_bytes"] / 1e6,
                entry["param_count"],
                entry["export_seconds"],
                entry["max_rel_error"],
                ", symbolic dims" if entry["symbolic_dims"] else "",
            )
        if not (out / MANIFEST_NAME).exists():
            _write_manifest(out, manifest)
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument(
        "--models",
        default=None,
        help=f"comma-separated subset of: {','.join(ZOO_MODELS)} (default: all)",
    )
    parser.add_argument("--force", action="store_true", help="regenerate up-to-date models too")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--print-shape-flags",
        metavar="MODEL",
        help="print the ago-search --input-shape flags for MODEL's manifest shapes and exit",
    )
    args = parser.parse_args(argv)
    if args.print_shape_flags:
        entry = json.loads((args.out / "manifest.json").read_text())["models"][
            args.print_shape_flags
        ]
        print(
            " ".join(
                f"--input-shape {name}={'x'.join(str(d) for d in shape)}"
                for name, shape in entry["inputs"].items()
            )
        )
        return 0
    # root stays at WARNING: onnxscript/onnx_ir log every optimizer pass at INFO
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    LOG.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    try:
        make_zoo(args.out, models, force=args.force)
    except (ValueError, ZooError) as e:
        LOG.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
