"""Small TIR kernels the measurement tests share: a matmul, one that crashes, one that hangs."""

from __future__ import annotations

import tvm
from tvm import te
from tvm.script import tirx as T

N = 64
MATMUL_ARGS = [["TENSOR", "float32", [N, N]]] * 3
VECTOR_ARGS = [["TENSOR", "float32", [16]]]  # the arguments of the two below


def matmul(n: int = N) -> tvm.IRModule:
    a = te.placeholder((n, n), name="A")
    b = te.placeholder((n, n), name="B")
    k = te.reduce_axis((0, n), name="k")
    c = te.compute((n, n), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="C")
    return tvm.IRModule({"main": te.create_prim_func([a, b, c]).with_attr("global_symbol", "main")})


@T.prim_func
def writes_far_out_of_bounds(a: T.handle):
    T.func_attr({"global_symbol": "main"})
    A = T.match_buffer(a, (16,), "float32")
    for i in range(1000000):
        A[i * 1024] = T.float32(1)


@T.prim_func
def never_ends(a: T.handle):
    T.func_attr({"global_symbol": "main"})
    A = T.match_buffer(a, (16,), "float32")
    for _i, _j in T.grid(1048576, 1048576):  # 1e12 dependent float adds
        A[0] = A[0] + T.float32(1)
