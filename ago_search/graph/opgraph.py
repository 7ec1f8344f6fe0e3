"""OpGraph: one node per operator binding of a Relax function, as a networkx DiGraph.

Which bindings are nodes, and how they map to the legalized module
-----------------------------------------------------------------
The partition built on this graph is applied to the *legalized* module (`legalize`: the
default pipeline's DispatchSampling, DispatchSortScan, LegalizeOps, AnnotateTIROpPattern and
FoldConstant; every operator binding is then an `R.call_tir`). So the graph is read off that
module: every binding of `main` whose value is a call (`R.call_tir`, or a Relax operator that
has no legalization) is one node, and the node is that binding. Node id = the binding's var
name (`var`; TVM's importer makes them unique; a repeated name gets "#<index>" appended), and
`index` = its position among the bindings of the legalized `main`.

LegalizeOps keeps the binding Vars of `main` (same objects, same names: checked on conv, batch
norm, split, resize, matmul, ... in TVM 0.27), so the high-level operator of a node is the
binding of the input module with the same Var; its name and attributes become `op` and `attrs`.
A binding that legalization created has no such binding: it is named "tir.<kernel>". A
`call_tir` the ONNX importer emitted itself (Clip -> maximum/minimum, Pad, Tile, Einsum) is
named the same way ("tir.pad").

Not nodes: TupleGetItem, Tuple, Var-to-Var aliases, MatchCast and constants (edges and graph
outputs look through them), and every binding computed from constants only: FoldConstant
removes those (shape chains, a Gemm weight's permute_dims, Clip's NaN guards), and their values
are constants of the consumer (counted in its `params`). A tuple-producing call (split, batch
norm) is one node with several `out_shapes`; its consumers read fields through TupleGetItem.
Reshape-like bindings stay nodes (mapping "reorganize"); they are the only operators that
`R.call_tir(reshape)` becomes, and the partition must place them too.

Node attributes: `op`, `attrs` (plain Python values), `var`, `index`, `primfunc` (the legalized
PrimFunc name, None when not a call_tir), `op_pattern` (TVM's OpPatternKind of that PrimFunc, -1
when none), `inputs` (one entry per tensor argument: a node id, "input:<name>" or "const"),
`in_shapes`, `out_shapes`, `out_shape` (= out_shapes[0]), `dtype` (of output 0), `flops`
(conventions in `ago_search.graph.flops`), `bytes` (bytes read + written: every distinct tensor
argument incl. constants, plus every output), `mapping` (DNNFusion type), `complex`, `params`
(elements of the distinct constants among the arguments). Edges producer -> consumer carry
`bytes`: the size of the producer's tensors the consumer reads (for a tuple producer, the fields
it reads).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import networkx as nx
import tvm
from tvm import relax

from ago_search.errors import ModelError
from ago_search.graph.flops import Shape, num_elements, op_flops
from ago_search.graph.mapping import (
    MappingType,
    is_complex,
    known_mapping,
    mapping_from_op_pattern,
)
from ago_search.graph.winograd import legalize_map as winograd_legalize_map

logger = logging.getLogger(__name__)

INPUT_PREFIX = "input:"
CONST_REF = "const"
NO_OP_PATTERN = -1

_CALL_TIR_OPS = ("relax.call_tir", "relax.call_tir_inplace")


@dataclass(frozen=True)
class TensorInfo:
    """A tensor at the boundary of the graph: a model input."""

    name: str
    shape: Shape
    dtype: str


@dataclass(frozen=True)
class OpGraph:
    """The operator graph of one Relax function.

    `graph` holds the nodes and edges (attributes in the module docstring); `order` lists node
    ids in binding order (a topological order); `outputs` refers to what the function returns,
    one entry per returned tensor: a node id, or "input:<name>" / "const".
    """

    graph: nx.DiGraph
    order: tuple[str, ...]
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[str, ...]
    func_name: str
    param_count: int  # elements of the distinct constants the nodes read

    def node(self, node_id: str) -> Mapping[str, Any]:
        """The attributes of one node."""
        return self.graph.nodes[node_id]

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[str]:
        return iter(self.order)


def legalize(
    mod: tvm.IRModule, target: tvm.target.Target | None = None, winograd: int | None = None
) -> tvm.IRModule:
    """The module the partition edits: the default CPU pipeline up to (not including) FuseOps.

    Same passes and order as `relax.get_default_pipeline(target)` for llvm in TVM 0.27
    (`relax/backend/cpu_generic/pipeline.py`), run inside `with target` when one is given.
    `winograd` (a tile size of `ago_search.graph.winograd.TILES`): the 3x3 stride-1 convs it
    applies to are legalized as Winograd convs F(tile x tile, 3x3), their filters transformed
    here.
    """
    custom = winograd_legalize_map(winograd) if winograd else None
    passes = tvm.transform.Sequential(
        [
            relax.backend.DispatchSampling(),
            relax.backend.DispatchSortScan(),
            relax.transform.LegalizeOps(customize_legalize_map=custom),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(),
        ]
    )
    if target is None:
        return passes(mod)
    with target:
        return passes(mod)


def build_opgraph(
    mod: tvm.IRModule,
    func_name: str = "main",
    target: tvm.target.Target | None = None,
    legalized: tvm.IRModule | None = None,
) -> OpGraph:
    """The OpGraph of `func_name` of `mod` (as imported: weights constant, shapes static).

    `legalized` saves the legalization when the caller already has `legalize(mod, target)`.
    """
    if legalized is None:
        legalized = legalize(mod, target)
    high_level = _high_level_calls(mod[func_name])
    return _Builder(legalized, func_name, high_level).build()


# ---------------------------------------------------------------------------------------------
# helpers: types, attributes


def _shape_of(ty: Any, what: str) -> Shape:
    shape = getattr(ty, "shape", None)
    if shape is None or not hasattr(shape, "values"):
        raise ModelError(
            f"{what} has no static shape ({ty}); give every model input a fixed shape "
            "(shape_dict / --input-shape) and fold shape computations before building the graph"
        )
    dims = []
    for d in shape.values:
        if not isinstance(d, tvm.tirx.IntImm):
            raise ModelError(
                f"{what} has a symbolic dimension {d} in shape {shape}; give every model input a "
                "fixed shape (shape_dict / --input-shape)"
            )
        dims.append(int(d.value))
    return tuple(dims)


def _tensor_types(ty: Any, what: str) -> list[tuple[Shape, str]]:
    """(shape, dtype) of every tensor in `ty`, tuples flattened; non-tensors are skipped."""
    if isinstance(ty, relax.TensorType):
        return [(_shape_of(ty, what), str(ty.dtype))]
    if isinstance(ty, relax.TupleType):
        return [t for field in ty.fields for t in _tensor_types(field, what)]
    return []


def _dtype_bytes(dtype: str) -> int:
    dt = tvm.runtime.DataType(dtype)
    return max(1, (dt.bits * dt.lanes + 7) // 8)


def tensor_bytes(shape: Sequence[int], dtype: str) -> int:
    """Bytes of a dense tensor (float32 = 4 bytes an element)."""
    return num_elements(shape) * _dtype_bytes(dtype)


def _plain(value: Any) -> Any:
    """A TVM attribute value as plain Python data (tuples, ints, floats, strings, None)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, tvm.tirx.IntImm):
        return int(value.value)
    if isinstance(value, tvm.tirx.FloatImm):
        return float(value.value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence):
        return tuple(_plain(v) for v in value)
    return str(value)


def _attr_fields(attrs: Any) -> list[str]:
    names: list[str] = []
    info = getattr(type(attrs), "__tvm_ffi_type_info__", None)
    while info is not None:
        names = [f.name for f in info.fields] + names
        info = info.parent_type_info
    return names


def plain_attrs(attrs: Any) -> dict[str, Any]:
    """The fields of a Relax op's attrs object (Conv2DAttrs, ...) as a plain dict."""
    if attrs is None:
        return {}
    return {name: _plain(getattr(attrs, name)) for name in _attr_fields(attrs)}


def _strip_dedup_digits(name: str) -> str:
    """TVM makes kernel names unique by appending digits (add1, resize2d1): drop them."""
    return name.rstrip("0123456789") or name


def tir_op_name(primfunc_name: str) -> str:
    """OpGraph name of a call_tir kernel: "tir.<name>" without dedup digits or "tir_" prefix."""
    base = _strip_dedup_digits(primfunc_name)
    return "tir." + base.removeprefix("tir_")


@dataclass(frozen=True)
class _HighLevelCall:
    op: str
    attrs: dict[str, Any]
    in_shapes: tuple[Shape, ...]


def _call_op_name(call: relax.Call) -> str | None:
    op = call.op
    if isinstance(op, tvm.ir.Op):
        if op.name in _CALL_TIR_OPS and isinstance(call.args[0], tvm.ir.GlobalVar):
            return tir_op_name(call.args[0].name_hint)
        return str(op.name)
    if isinstance(op, tvm.ir.GlobalVar):
        return "call." + op.name_hint
    return None


def _operand_types(call: relax.Call, what: str) -> list[tuple[Shape, str]]:
    """Tensor operands of a call, in order: the call_tir argument tuple, else the arguments."""
    args = call.args
    if isinstance(call.op, tvm.ir.Op) and call.op.name in _CALL_TIR_OPS:
        args = [args[1]]
    out: list[tuple[Shape, str]] = []
    for a in args:
        if isinstance(a, relax.ShapeExpr | tvm.ir.GlobalVar):
            continue
        out.extend(_tensor_types(a.ty, what))
    return out


def _high_level_calls(func: relax.Function) -> dict[relax.Var, _HighLevelCall]:
    """Var -> operator of every call binding of the input function, keyed by the Var object."""
    calls: dict[relax.Var, _HighLevelCall] = {}
    for block in func.body.blocks:
        for b in block.bindings:
            value = b.value
            if not isinstance(value, relax.Call):
                continue
            op = _call_op_name(value)
            if op is None:
                continue
            try:
                in_shapes = tuple(s for s, _ in _operand_types(value, f"argument of {b.var.name}"))
            except ModelError:
                # a shape-computing binding (folded away later) may be dynamic; skip it here
                continue
            attrs = {} if op.startswith("tir.") else plain_attrs(value.attrs)
            calls[b.var] = _HighLevelCall(op=op, attrs=attrs, in_shapes=in_shapes)
    return calls


# ---------------------------------------------------------------------------------------------
# the builder


@dataclass(frozen=True)
class _NodeRef:
    node: str
    field: int | None  # None: the whole output (all fields of a tuple producer)


@dataclass(frozen=True)
class _InputRef:
    name: str


@dataclass(frozen=True)
class _ConstRef:
    elements: int
    handle: int  # identity of the constant, so a shared weight counts once


_Ref = _NodeRef | _InputRef | _ConstRef


def _ref_name(ref: _Ref) -> str:
    if isinstance(ref, _NodeRef):
        return ref.node
    if isinstance(ref, _InputRef):
        return INPUT_PREFIX + ref.name
    return CONST_REF


class _Builder:
    """Walks the legalized function once, in binding order."""

    def __init__(
        self, legalized: tvm.IRModule, func_name: str, high_level: dict[relax.Var, _HighLevelCall]
    ):
        self.mod = legalized
        self.func: relax.Function = legalized[func_name]
        self.func_name = func_name
        self.high_level = high_level
        self.graph = nx.DiGraph()
        self.order: list[str] = []
        # Var -> what it stands for: a list of refs (several for a tuple)
        self.env: dict[relax.Var, list[_Ref]] = {}
        self.tuple_fields: dict[relax.Var, list[list[_Ref]]] = {}
        self.consts: dict[int, int] = {}
        self.unknown_ops: dict[str, int] = {}
        self.flops_cache: dict[str, int] = {}

    def build(self) -> OpGraph:
        inputs = []
        for p in self.func.params:
            types = _tensor_types(p.ty, f"input {p.name}")
            if len(types) == 1:
                inputs.append(TensorInfo(p.name, types[0][0], types[0][1]))
            self.env[p] = [_InputRef(p.name)]
        index = 0
        for block in self.func.body.blocks:
            for b in block.bindings:
                self._bind(b, index)
                index += 1
        outputs = tuple(_ref_name(r) for r in self._resolve(self.func.body.body))
        for op, count in sorted(self.unknown_ops.items()):
            logger.warning(
                "operator %s (%d nodes) is not in the mapping table; its mapping type comes "
                "from TVM's op pattern",
                op,
                count,
            )
        return OpGraph(
            graph=self.graph,
            order=tuple(self.order),
            inputs=tuple(inputs),
            outputs=outputs,
            func_name=self.func_name,
            param_count=sum(self.consts.values()),
        )

    # -- references ---------------------------------------------------------------------------

    def _resolve(self, expr: Any) -> list[_Ref]:
        if isinstance(expr, tvm.ir.Constant):
            elements = sum(num_elements(s) for s, _ in _tensor_types(expr.ty, "constant"))
            return [_ConstRef(elements, expr.__hash__())]
        if isinstance(expr, relax.Tuple):
            return [r for f in expr.fields for r in self._resolve(f)]
        if isinstance(expr, relax.TupleGetItem):
            return self._resolve_field(expr.tuple_value, int(expr.index))
        if isinstance(expr, relax.Var):
            return self.env.get(expr, [])
        return []  # ShapeExpr, PrimValue, strings: not tensors

    def _resolve_field(self, tup: Any, index: int) -> list[_Ref]:
        if isinstance(tup, relax.Tuple):
            return self._resolve(tup.fields[index])
        if isinstance(tup, relax.Var) and tup in self.tuple_fields:
            return self.tuple_fields[tup][index]
        refs = self._resolve(tup)
        if len(refs) == 1 and isinstance(refs[0], _NodeRef) and refs[0].field is None:
            return [_NodeRef(refs[0].node, index)]
        return refs

    # -- bindings -----------------------------------------------------------------------------

    def _bind(self, binding: Any, index: int) -> None:
        var, value = binding.var, binding.value
        if isinstance(value, relax.Call) and _call_op_name(value) is not None:
            self._add_node(var, value, index)
        elif isinstance(value, relax.Tuple):
            self.tuple_fields[var] = [self._resolve(f) for f in value.fields]
            self.env[var] = [r for f in self.tuple_fields[var] for r in f]
        else:
            self.env[var] = self._resolve(value)

    def _node_id(self, name: str, index: int) -> str:
        return name if name not in self.graph else f"{name}#{index}"

    def _add_node(self, var: relax.Var, call: relax.Call, index: int) -> None:
        node_id = self._node_id(var.name, index)
        outs = _tensor_types(var.ty, f"binding {var.name}")
        out_shapes = [s for s, _ in outs]
        primfunc, op_pattern = self._primfunc(call)
        hl = self.high_level.get(var)
        op = hl.op if hl is not None else _call_op_name(call) or "unknown"
        attrs = hl.attrs if hl is not None else {}
        if primfunc is None:
            logger.warning(
                "binding %s (%s) is not a call_tir after legalization; it cannot be fused", var, op
            )

        args = call.args[1:2] if primfunc else call.args
        operand_refs: list[_Ref] = []
        operand_types: list[tuple[Shape, str]] = []
        for a in args:
            if isinstance(a, relax.ShapeExpr | tvm.ir.GlobalVar):
                continue
            fields = a.fields if isinstance(a, relax.Tuple) else [a]
            for f in fields:
                types = _tensor_types(f.ty, f"argument of {var.name}")
                operand_types.extend(types)
                operand_refs.extend(self._operand_refs(f, len(types)))

        mapping = known_mapping(op)
        if mapping is None:
            self.unknown_ops[op] = self.unknown_ops.get(op, 0) + 1
            mapping = mapping_from_op_pattern(op_pattern if op_pattern >= 0 else None)
        in_shapes_for_flops = hl.in_shapes if hl is not None else [s for s, _ in operand_types]
        flops = op_flops(op, attrs, in_shapes_for_flops, out_shapes)
        if flops is None:
            flops = self._estimated_flops(primfunc)

        consts = {r.handle: r.elements for r in operand_refs if isinstance(r, _ConstRef)}
        self.consts.update(consts)
        read = self._bytes_read(operand_refs, operand_types)
        written = sum(tensor_bytes(s, d) for s, d in outs)

        self.graph.add_node(
            node_id,
            op=op,
            attrs=attrs,
            var=var.name,
            index=index,
            primfunc=primfunc,
            op_pattern=op_pattern,
            inputs=[_ref_name(r) for r in operand_refs],
            in_shapes=[s for s, _ in operand_types],
            out_shapes=out_shapes,
            out_shape=out_shapes[0] if out_shapes else (),
            dtype=outs[0][1] if outs else "",
            flops=int(flops),
            bytes=int(read + written),
            mapping=MappingType(mapping).value,
            complex=is_complex(op),
            params=sum(consts.values()),
        )
        self._add_edges(node_id, operand_refs)
        self.order.append(node_id)
        self.env[var] = [_NodeRef(node_id, None)]

    def _operand_refs(self, expr: Any, count: int) -> list[_Ref]:
        """One ref per tensor of `expr` (a whole tuple producer is read field by field)."""
        refs = self._resolve(expr)
        if len(refs) == count:
            return refs
        if len(refs) == 1 and isinstance(refs[0], _NodeRef) and refs[0].field is None:
            return [_NodeRef(refs[0].node, i) for i in range(count)]
        logger.warning("cannot tell where %s comes from; counted as a model input", expr)
        return [_InputRef(str(expr))] * count

    def _primfunc(self, call: relax.Call) -> tuple[str | None, int]:
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name in _CALL_TIR_OPS):
            return None, NO_OP_PATTERN
        gv = call.args[0]
        func = self.mod[gv]
        pattern = func.attrs.get("op_pattern") if func.attrs is not None else None
        return gv.name_hint, int(pattern) if pattern is not None else NO_OP_PATTERN

    def _estimated_flops(self, primfunc: str | None) -> int:
        if primfunc is None:
            return 0
        if primfunc not in self.flops_cache:
            from tvm.s_tir.analysis import estimate_tir_flops

            try:
                flops = estimate_tir_flops(tvm.IRModule({"main": self.mod[primfunc]}))
            except Exception as err:  # noqa: BLE001 - an estimate, never a reason to fail
                logger.warning("cannot estimate the FLOPs of %s: %s", primfunc, err)
                flops = 0.0
            self.flops_cache[primfunc] = int(flops)
        return self.flops_cache[primfunc]

    def _bytes_read(self, refs: Sequence[_Ref], types: Sequence[tuple[Shape, str]]) -> int:
        seen: set[_Ref] = set()
        total = 0
        for ref, (shape, dtype) in zip(refs, types, strict=True):
            if ref in seen:
                continue
            seen.add(ref)
            total += tensor_bytes(shape, dtype)
        return total

    def _producer_bytes(self, ref: _NodeRef) -> int:
        attrs = self.graph.nodes[ref.node]
        dtype = attrs["dtype"]
        shapes = attrs["out_shapes"] if ref.field is None else [attrs["out_shapes"][ref.field]]
        return sum(tensor_bytes(s, dtype) for s in shapes)

    def _add_edges(self, consumer: str, refs: Sequence[_Ref]) -> None:
        read: dict[str, set[_NodeRef]] = {}
        for r in refs:
            if isinstance(r, _NodeRef):
                read.setdefault(r.node, set()).add(r)
        for producer, fields in read.items():
            if any(f.field is None for f in fields):
                fields = {_NodeRef(producer, None)}
            size = sum(self._producer_bytes(f) for f in fields)
            self.graph.add_edge(producer, consumer, bytes=int(size))


# ---------------------------------------------------------------------------------------------
# plain-data round trip


def _tuples(value: Any) -> Any:
    """Lists back to tuples (node attributes hold tuples, never lists, except these keys)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


_LIST_ATTRS = ("inputs", "in_shapes", "out_shapes")


def opgraph_to_dict(g: OpGraph) -> dict[str, Any]:
    """The OpGraph as JSON-ready plain data (tuples become lists)."""
    return {
        "func_name": g.func_name,
        "inputs": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in g.inputs],
        "outputs": list(g.outputs),
        "param_count": g.param_count,
        "nodes": [{"id": n, **g.graph.nodes[n]} for n in g.order],
        "edges": [{"src": u, "dst": v, **d} for u, v, d in g.graph.edges(data=True)],
    }


def opgraph_from_dict(data: Mapping[str, Any]) -> OpGraph:
    """Inverse of `opgraph_to_dict` (also after a JSON round trip)."""
    graph = nx.DiGraph()
    order = []
    for node in data["nodes"]:
        attrs = {k: v for k, v in node.items() if k != "id"}
        for key, value in attrs.items():
            if key in _LIST_ATTRS:
                attrs[key] = [_tuples(v) for v in value]
            else:
                attrs[key] = _tuples(value)
        graph.add_node(node["id"], **attrs)
        order.append(node["id"])
    for edge in data["edges"]:
        graph.add_edge(edge["src"], edge["dst"], bytes=int(edge["bytes"]))
    return OpGraph(
        graph=graph,
        order=tuple(order),
        inputs=tuple(TensorInfo(t["name"], tuple(t["shape"]), t["dtype"]) for t in data["inputs"]),
        outputs=tuple(data["outputs"]),
        func_name=str(data["func_name"]),
        param_count=int(data["param_count"]),
    )
