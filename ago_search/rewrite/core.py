"""The rewrite engine: named rules, one pass per rule, repeated to a fixpoint, with a report.

A rule is a function from one binding's value (a Relax `Call` or `TupleGetItem`, its arguments
already rewritten) to a replacement expression, or None where it does not apply. The engine
(`RewritePass`, a `PyExprMutator`) walks every binding of a Relax function in order and offers
each value to the rule; a replacement may be a leaf (a Var or constant: the binding disappears
and its uses read the leaf), a call, or a nest of calls (the inner calls are emitted as new
bindings named after the replaced one). Rules look at producers through `RewriteContext`:
`producer(var)` (the value bound to a Var, as already rewritten in this pass), `const(expr)`
(a constant's numpy value), `single_use(var)`.

Why single use. A rule that absorbs a producer into its consumer (conv -> multiply c becomes
conv with scaled weights) removes the producer only if nothing else reads it; otherwise the
other readers keep the old binding alive and the rewrite duplicates work. Use counts come from
the function as it was when the pass began (dead bindings removed first). A Var that a
replacement of this pass reads anew is not "single use" for the rest of the pass, as its count
is stale; the next pass sees fresh counts. Counting is conservative, never unsafe.

Safety net. A replacement whose type (shape, dtype) differs from the binding it replaces is
dropped with a warning: a rule bug must not change the model's interface or crash later passes.

Fixpoint. `rewrite` applies each enabled rule once per round, in registry order, and repeats
rounds until a round changes nothing or `max_rounds` is reached. After a pass that fired, dead
bindings are removed (`DeadCodeElimination`) and the operator bindings counted: the difference
is the rule's `ops_removed` (an operator binding is a binding whose value is a `Call`; tuples,
TupleGetItem, aliases and constants are not operators, as in the OpGraph).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import tvm
import tvm_ffi
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

logger = logging.getLogger(__name__)

Shape = tuple[int, ...]

# A rule's rewrite: (context, binding value) -> replacement or None.
RewriteFn = Callable[["RewriteContext", relax.Expr], relax.Expr | None]


@dataclass(frozen=True)
class Rule:
    """One named rewrite and the mathematical property that makes it correct.

    `property` is one of "constant folding", "identity", "associativity", "commutativity",
    "distributivity", "linearity", "strength reduction", "composition", "pattern"; `formula`
    shows the rewrite; `precondition` says when it applies (the rule checks it; if it fails
    the binding is left as it is).
    """

    name: str
    property: str
    formula: str
    precondition: str
    apply: RewriteFn = field(repr=False, compare=False)

    def describe(self) -> dict[str, str]:
        return {
            "name": self.name,
            "property": self.property,
            "formula": self.formula,
            "precondition": self.precondition,
        }


@dataclass(frozen=True)
class RuleStats:
    """What one rule did over a whole `rewrite` call."""

    rule: str
    fired: int  # replacements made
    ops_removed: int  # operator bindings before minus after its passes (dead code included)
    passes_fired: int  # passes in which it fired at least once


@dataclass(frozen=True)
class RewriteReport:
    """Outcome of `rewrite`: op counts and, per enabled rule (in order), what it did."""

    ops_before: int
    ops_after: int
    rounds: int
    converged: bool  # a round changed nothing (else max_rounds stopped it)
    dead_ops_removed: int  # operator bindings dead already in the input
    rules: tuple[RuleStats, ...]
    seconds: float

    @property
    def ops_removed(self) -> int:
        return self.ops_before - self.ops_after

    def stats(self, rule: str) -> RuleStats:
        for s in self.rules:
            if s.rule == rule:
                return s
        raise KeyError(f"rule '{rule}' was not enabled in this rewrite")

    def fired(self, rule: str) -> int:
        return self.stats(rule).fired

    def removed_by(self, rule: str) -> int:
        return self.stats(rule).ops_removed

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RewriteReport:
        fields = dict(data)
        fields["rules"] = tuple(RuleStats(**r) for r in data["rules"])
        return cls(**fields)


# ---------------------------------------------------------------------------------------------
# counting and cleaning


def count_ops(mod: tvm.IRModule) -> int:
    """Operator bindings (bindings whose value is a Call) of the module's Relax functions."""
    total = 0
    for _, func in _relax_functions(mod):
        for block in func.body.blocks:
            total += sum(1 for b in block.bindings if isinstance(b.value, relax.Call))
    return total


def op_histogram(mod: tvm.IRModule) -> dict[str, int]:
    """Operator name -> count over the module's Relax functions (call_tir as "call_tir:<fn>")."""
    counts: dict[str, int] = {}
    for _, func in _relax_functions(mod):
        for block in func.body.blocks:
            for b in block.bindings:
                if not isinstance(b.value, relax.Call):
                    continue
                name = call_op_name(b.value) or "call"
                if name == "relax.call_tir":
                    name = "call_tir:" + b.value.args[0].name_hint.rstrip("0123456789")
                counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def call_op_name(expr: Any) -> str | None:
    """The operator's name ("relax.add") for a call of a Relax operator, else None."""
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return str(expr.op.name)
    return None


def _relax_functions(mod: tvm.IRModule) -> list[tuple[tvm.ir.GlobalVar, relax.Function]]:
    out = []
    for gv, func in mod.functions.items():
        if not isinstance(func, relax.Function):
            continue
        attrs = func.attrs
        if attrs is not None and ("Primitive" in attrs or "Composite" in attrs):
            continue
        out.append((gv, func))
    return sorted(out, key=lambda item: item[0].name_hint)


def remove_dead_code(mod: tvm.IRModule) -> tvm.IRModule:
    """Dead bindings (and PrimFuncs no longer called) removed; every Relax function kept."""
    entries = [gv.name_hint for gv, _ in _relax_functions(mod)]
    return relax.transform.DeadCodeElimination(entries)(mod)


def _var_uses(func: relax.Function) -> dict[relax.Var, int]:
    uses: dict[relax.Var, int] = {}

    def visit(expr: Any) -> None:
        if isinstance(expr, relax.Var):
            uses[expr] = uses.get(expr, 0) + 1
        elif isinstance(expr, relax.Call):
            for a in expr.args:
                visit(a)
        elif isinstance(expr, relax.Tuple):
            for f in expr.fields:
                visit(f)
        elif isinstance(expr, relax.TupleGetItem):
            visit(expr.tuple_value)
        elif isinstance(expr, relax.SeqExpr):
            for block in expr.blocks:
                for b in block.bindings:
                    visit(b.value)
            visit(expr.body)

    visit(func.body)
    return uses


# ---------------------------------------------------------------------------------------------
# the context rules see


class RewriteContext:
    """What a rule may ask about the function being rewritten (implemented by the pass)."""

    def producer(self, expr: Any) -> Any:
        """The value bound to `expr` if it is a Var bound in this function, else None."""
        raise NotImplementedError

    def single_use(self, expr: Any) -> bool:
        """`expr` is a Var read exactly once (by the binding being rewritten)."""
        raise NotImplementedError

    def use_count(self, expr: Any) -> int | None:
        """How many times `expr` (a Var) is read, or None where the count is not reliable."""
        raise NotImplementedError

    def callee(self, gv: tvm.ir.GlobalVar) -> Any:
        """The module's function for a GlobalVar (a call_tir's PrimFunc)."""
        raise NotImplementedError

    # helpers every rule uses; not overridden

    def producer_call(self, expr: Any, *ops: str) -> relax.Call | None:
        """The producing Call of `expr` if its operator is one of `ops` (any when none given)."""
        value = self.producer(expr)
        if not isinstance(value, relax.Call):
            return None
        if ops and call_op_name(value) not in ops:
            return None
        return value

    def absorbable(self, expr: Any, *ops: str) -> relax.Call | None:
        """`producer_call(expr, *ops)` where `expr` is read only by the current binding."""
        call = self.producer_call(expr, *ops)
        if call is None or not self.single_use(expr):
            return None
        return call

    @staticmethod
    def const(expr: Any) -> np.ndarray | None:
        return const_value(expr)


def const_value(expr: Any) -> np.ndarray | None:
    """The numpy value of a tensor constant, else None."""
    if isinstance(expr, tvm.ir.Constant) and isinstance(expr.ty, relax.TensorType):
        return expr.value.numpy()
    return None


def static_shape(expr: Any) -> Shape | None:
    """The static shape of a tensor expression, else None."""
    ty = getattr(expr, "ty", None)
    if not isinstance(ty, relax.TensorType):
        return None
    shape = ty.shape
    values = getattr(shape, "values", None)
    if values is None:
        return None
    dims = []
    for d in values:
        if not isinstance(d, tvm.tirx.IntImm):
            return None
        dims.append(int(d.value))
    return tuple(dims)


def dtype_of(expr: Any) -> str | None:
    ty = getattr(expr, "ty", None)
    if isinstance(ty, relax.TensorType):
        return str(ty.dtype)
    return None


def make_const(value: Any, dtype: str) -> tvm.ir.Constant:
    """A Relax tensor constant of `dtype` (numpy computes in float64 where asked; cast here)."""
    return relax.const(np.array(value, dtype=dtype, order="C"), dtype)


# ---------------------------------------------------------------------------------------------
# the pass


@mutator
class RewritePass(PyExprMutator, RewriteContext):
    """Applies one rule to every binding of one Relax function (see the module docstring)."""

    def __init__(self, mod: tvm.IRModule, rule: Rule, uses: dict[relax.Var, int], names: set):
        super().__init__(mod)
        self.mod = mod
        self.rule = rule
        self.uses = uses
        self.names = names  # every var name in the function, so new names stay unique
        self.origin: dict[relax.Var, relax.Var] = {}  # new var -> the var it replaces
        self.subst: dict[relax.Var, relax.Expr] = {}  # old var -> leaf it became
        self.touched: set[relax.Var] = set()
        self.fired = 0
        self.rejected = 0
        self._dataflow = False

    # -- RewriteContext -------------------------------------------------------------------------

    def producer(self, expr: Any) -> Any:
        if not isinstance(expr, relax.Var):
            return None
        return self.lookup_binding(expr)

    def use_count(self, expr: Any) -> int | None:
        if not isinstance(expr, relax.Var) or expr in self.touched:
            return None
        old = self.origin.get(expr)
        return None if old is None else self.uses.get(old, 0)

    def single_use(self, expr: Any) -> bool:
        return self.use_count(expr) == 1

    def callee(self, gv: tvm.ir.GlobalVar) -> Any:
        return self.mod[gv]

    # -- mutator hooks --------------------------------------------------------------------------

    def visit_var_(self, var: relax.Var) -> relax.Expr:
        if var in self.subst:
            return self.subst[var]
        return super().visit_var_(var)

    def visit_dataflow_var_(self, var: relax.Var) -> relax.Expr:
        if var in self.subst:
            return self.subst[var]
        return super().visit_dataflow_var_(var)

    def visit_dataflow_block_(self, block: relax.DataflowBlock) -> relax.DataflowBlock:
        self._dataflow = True
        try:
            return super().visit_dataflow_block_(block)
        finally:
            self._dataflow = False

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        value = self.visit_expr(binding.value)
        if isinstance(value, relax.Call | relax.TupleGetItem):
            try:
                new = self.rule.apply(self, value)
            except Exception:
                logger.exception("rule %s failed on %s; binding kept", self.rule.name, binding.var)
                new = None
            if new is not None and not new.same_as(value):
                value = self._accept(binding, value, new)
        self._emit(binding.var, value)

    # -- emission -------------------------------------------------------------------------------

    def _accept(self, binding: relax.VarBinding, old: relax.Expr, new: relax.Expr) -> relax.Expr:
        """`new` flattened and type-checked against the binding; `old` if it does not match."""
        base = binding.var.name
        flat = self._flatten(new, base)
        normalized = self.builder_.normalize(flat)
        if not tvm_ffi.structural_equal(normalized.ty, binding.var.ty, map_free_vars=True):
            self.rejected += 1
            logger.warning(
                "rule %s: replacement of %s has type %s, not %s; dropped",
                self.rule.name,
                base,
                normalized.ty,
                binding.var.ty,
            )
            return old
        self.fired += 1
        self._touch(normalized)
        return normalized

    def _touch(self, expr: Any) -> None:
        if isinstance(expr, relax.Var):
            self.touched.add(expr)
        elif isinstance(expr, relax.Call):
            for a in expr.args:
                self._touch(a)
        elif isinstance(expr, relax.Tuple):
            for f in expr.fields:
                self._touch(f)
        elif isinstance(expr, relax.TupleGetItem):
            self._touch(expr.tuple_value)

    def _fresh_name(self, base: str) -> str:
        k = 1
        while f"{base}_{k}" in self.names:
            k += 1
        name = f"{base}_{k}"
        self.names.add(name)
        return name

    def _flatten(self, expr: relax.Expr, base: str) -> relax.Expr:
        """`expr` with every nested call emitted as its own binding (so names stay readable)."""
        if isinstance(expr, relax.Call):
            args = [self._flatten_arg(a, base) for a in expr.args]
            return relax.Call(expr.op, args, expr.attrs, expr.ty_args)
        if isinstance(expr, relax.Tuple):
            return relax.Tuple([self._flatten_arg(f, base) for f in expr.fields])
        if isinstance(expr, relax.TupleGetItem):
            return relax.TupleGetItem(self._flatten_arg(expr.tuple_value, base), expr.index)
        return expr

    def _flatten_arg(self, expr: relax.Expr, base: str) -> relax.Expr:
        if isinstance(expr, relax.Call | relax.TupleGetItem):
            inner = self.builder_.normalize(self._flatten(expr, base))
            var = self.builder_.emit(inner, self._fresh_name(base))
            self.touched.add(var)
            return var
        if isinstance(expr, relax.Tuple):
            return relax.Tuple([self._flatten_arg(f, base) for f in expr.fields])
        return expr

    def _emit(self, var: relax.Var, value: relax.Expr) -> None:
        is_leaf = isinstance(value, relax.Var | tvm.ir.Constant | relax.ShapeExpr)
        local = isinstance(var, relax.DataflowVar)
        if is_leaf and (local or not isinstance(value, relax.DataflowVar)):
            self.subst[var] = value
            if isinstance(value, relax.Var):
                self.touched.add(value)
            return
        if local or not self._dataflow:
            new_var = self.builder_.emit(value, var.name)
        else:
            new_var = self.builder_.emit_output(value, var.name)
        self.set_var_remap(var, new_var)
        self.origin[new_var] = var


class _ScanContext(RewriteContext):
    """The context of a pass that has changed nothing yet: the function as it is."""

    def __init__(self, mod: tvm.IRModule, func: relax.Function, uses: dict[relax.Var, int]):
        self.mod = mod
        self.uses = uses
        self.values = {b.var: b.value for block in func.body.blocks for b in block.bindings}

    def producer(self, expr: Any) -> Any:
        value = self.values.get(expr) if isinstance(expr, relax.Var) else None
        while isinstance(value, relax.Var) and value in self.values:
            value = self.values[value]
        return value

    def use_count(self, expr: Any) -> int | None:
        return self.uses.get(expr) if isinstance(expr, relax.Var) else None

    def single_use(self, expr: Any) -> bool:
        return self.use_count(expr) == 1

    def callee(self, gv: tvm.ir.GlobalVar) -> Any:
        return self.mod[gv]


def _rule_matches(mod: tvm.IRModule, func: relax.Function, rule: Rule, uses: dict) -> bool:
    """Whether a pass of `rule` over `func` would fire. Exact, and much cheaper than the pass
    (whose Python callbacks cost about 75 us a binding): until a pass fires, it sees the
    function exactly as it is, so it fires iff some binding of the unchanged function matches.
    """
    ctx = _ScanContext(mod, func, uses)
    for block in func.body.blocks:
        for b in block.bindings:
            if not isinstance(b.value, relax.Call | relax.TupleGetItem):
                continue
            try:
                new = rule.apply(ctx, b.value)
            except Exception:  # noqa: BLE001 - the pass itself reports the failure
                return True
            if new is not None and not new.same_as(b.value):
                return True
    return False


def apply_rule(mod: tvm.IRModule, rule: Rule) -> tuple[tvm.IRModule, int]:
    """One pass of `rule` over every Relax function of `mod`: (new module, replacements)."""
    fired = 0
    updates = {}
    for gv, func in _relax_functions(mod):
        uses = _var_uses(func)
        if not _rule_matches(mod, func, rule, uses):
            continue
        rewriter = RewritePass(mod, rule, uses, _var_names(func))
        new_func = rewriter.visit_expr(func)
        if rewriter.fired:
            fired += rewriter.fired
            updates[gv] = new_func
    if not updates:
        return mod, 0
    new_mod = mod.clone()
    for gv, func in updates.items():
        new_mod[gv] = func
    return new_mod, fired


def _var_names(func: relax.Function) -> set[str]:
    names = {p.name for p in func.params}
    for block in func.body.blocks:
        for b in block.bindings:
            names.add(b.var.name)
    return names


# ---------------------------------------------------------------------------------------------
# the driver


def resolve_rules(
    rules: Iterable[str | Rule] | None, registry: Mapping[str, Rule]
) -> tuple[Rule, ...]:
    """Rules by name (or given as Rule objects), in the order given; None = the whole registry."""
    if rules is None:
        return tuple(registry.values())
    out = []
    for r in rules:
        if isinstance(r, Rule):
            out.append(r)
        elif r in registry:
            out.append(registry[r])
        else:
            raise KeyError(f"unknown rewrite rule '{r}'; known rules: {', '.join(registry)}")
    return tuple(out)


def run_rules(mod: tvm.IRModule, rules: Sequence[Rule], max_rounds: int) -> tuple:
    """The fixpoint loop of `rewrite` (see the module docstring)."""
    start = time.perf_counter()
    ops_input = count_ops(mod)
    mod = remove_dead_code(mod)
    ops_before = count_ops(mod)
    fired = {r.name: 0 for r in rules}
    removed = {r.name: 0 for r in rules}
    passes = {r.name: 0 for r in rules}
    rounds = 0
    converged = False
    while rounds < max_rounds:
        rounds += 1
        changed = False
        for rule in rules:
            new_mod, n = apply_rule(mod, rule)
            if n == 0:
                continue
            new_mod = remove_dead_code(new_mod)
            before, after = count_ops(mod), count_ops(new_mod)
            fired[rule.name] += n
            removed[rule.name] += before - after
            passes[rule.name] += 1
            logger.debug("rule %s fired %d times: %d -> %d ops", rule.name, n, before, after)
            mod = new_mod
            changed = True
        if not changed:
            converged = True
            break
    report = RewriteReport(
        ops_before=ops_before,
        ops_after=count_ops(mod),
        rounds=rounds,
        converged=converged,
        dead_ops_removed=ops_input - ops_before,
        rules=tuple(
            RuleStats(r.name, fired[r.name], removed[r.name], passes[r.name]) for r in rules
        ),
        seconds=round(time.perf_counter() - start, 4),
    )
    if not converged:
        logger.warning("rewrite stopped after %d rounds before reaching a fixpoint", rounds)
    return mod, report
