"""What TVM's Relax ONNX importer can convert: an up-front scan and opset normalisation."""

from __future__ import annotations

import functools
import logging
from collections import defaultdict

import onnx

from ago_search.errors import UnsupportedOperatorsError

log = logging.getLogger(__name__)

# Handled by the importer outside its converter map.
_DIRECT_OPS = frozenset({"Constant", "If"})
# Converters exist, but the compiled module cannot run them on CPU the way a search needs:
# control flow builds a Relax function with no dataflow block, which cannot be partitioned.
_UNSUPPORTED_FOR_SEARCH = {
    "If": "control flow (If) whose condition is not constant once input shapes are fixed",
    "Loop": "control flow (Loop) is not supported; unroll it at export",
    "Scan": "control flow (Scan) is not supported; unroll it at export",
}
_NAMES_SHOWN = 3


@functools.cache
def _convert_map() -> dict:
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    return _get_convert_map()


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            for sub in attr.graphs:
                yield from _all_nodes(sub)


def scan_unsupported_ops(model: onnx.ModelProto, model_name: str) -> None:
    """Raise one UnsupportedOperatorsError listing every unsupported op type at once."""
    convert_map = _convert_map()
    unsupported: dict[str, list[str]] = defaultdict(list)
    reasons: dict[str, str] = {}
    for index, node in enumerate(_all_nodes(model.graph)):
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        name = node.name or f"#{index} ({node.op_type})"
        if node.domain not in ("", "ai.onnx"):
            unsupported[op].append(name)
            reasons[op] = f"custom domain '{node.domain}'"
        elif op in _UNSUPPORTED_FOR_SEARCH:
            unsupported[op].append(name)
            reasons[op] = _UNSUPPORTED_FOR_SEARCH[op]
        elif op not in convert_map and op not in _DIRECT_OPS:
            unsupported[op].append(name)
    if not unsupported:
        return
    lines = []
    for op, names in sorted(unsupported.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        shown = ", ".join(names[:_NAMES_SHOWN]) + (", ..." if len(names) > _NAMES_SHOWN else "")
        why = f" [{reasons[op]}]" if op in reasons else ""
        lines.append(f"{op} x{len(names)} (e.g. {shown}){why}")
    total = sum(len(v) for v in unsupported.values())
    raise UnsupportedOperatorsError(
        f"Model '{model_name}' uses {len(unsupported)} operator type(s) that TVM's ONNX "
        f"importer cannot convert ({total} nodes): {'; '.join(lines)}. Re-export the model "
        "without them (e.g. a different opset or exporter option, or replace custom ops by "
        "standard ONNX ops), then try again.",
        dict(unsupported),
    )


def _min_impl_version(op: str) -> int | None:
    converter = _convert_map().get(op)
    if converter is None or not hasattr(converter, "get_converter"):
        return None
    versions = [int(d.replace("_impl_v", "")) for d in dir(converter) if d.startswith("_impl_v")]
    return min(versions) if versions else None


def normalise_opset(
    model: onnx.ModelProto, opset: int, model_name: str
) -> tuple[onnx.ModelProto, int]:
    """Raise the opset where some op's model version predates every importer converter.

    The importer then silently picks its oldest converter, whose attribute/input
    conventions differ (Slice, Squeeze, Resize, Split all changed); converting the model
    with ONNX's version converter gives the importer semantics it knows.
    """
    needed = {}
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        low = _min_impl_version(node.op_type)
        if low is not None and low > opset:
            needed[node.op_type] = low
    if not needed:
        return model, opset
    target = max(max(needed.values()), 13)
    log.info(
        "converting %s from opset %d to %d (for %s)",
        model_name,
        opset,
        target,
        ", ".join(sorted(needed)),
    )
    try:
        converted = onnx.version_converter.convert_version(model, target)
    except Exception as exc:
        # The importer's oldest converter is often right anyway, and bench/search verify
        # every output against ONNX Runtime, so a wrong guess is caught, not shipped.
        log.warning(
            "%s: opset %d predates TVM's converters for %s and ONNX's version converter "
            "failed (%s); importing at opset %d. If the import fails, re-export with opset %d.",
            model_name,
            opset,
            ", ".join(sorted(needed)),
            exc,
            opset,
            target,
        )
        return model, opset
    return converted, target
