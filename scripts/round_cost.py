"""What one round of MetaSchedule's evolutionary search costs before anything is built: the
first round of 16 on ResNet-18's two heaviest NHWC convs, per cost model and population x
genetic iterations (the round is proposed, not measured):

    .venv/bin/python scripts/round_cost.py gnn,xgb

Run of 2026-12-07 (2-core AMD EPYC, znver3): gnn 128x4 14.4-16.4 s, 64x2 4.2-4.3 s; xgb
(MetaSchedule's, still in its warm-up: random predictions, no features) 128x4 7.4-7.8 s, 64x2
2.4-2.5 s. cProfile of a gnn 128x4 round (13.8 s): PerStoreFeature extraction of the 640
candidates 4.9 s, the GNN 1.3 s (0.6 s of it JAX's one-off compile), the evolution itself
(sampling, mutation, postprocessors) the other 7.3 s.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TVM_NUM_THREADS", "2")

import time

from tvm.s_tir import meta_schedule as ms

from ago_search.measure.intrinsics import register_cpu_tensor_intrinsics
from ago_search.pipeline import load_planned
from ago_search.schedule.rules import space_generator
from cost_model.factory import make_cost_model

pm = load_planned("datasets/zoo/resnet18.onnx", plan="tvm/NHWC")
tasks = sorted(pm.tasks, key=lambda t: -t.flops * t.weight)[:2]
register_cpu_tensor_intrinsics(tasks[0].target_object())
for cm_name in (sys.argv[1] if len(sys.argv) > 1 else "gnn,xgb").split(","):
    for pop, iters in [(128, 4), (64, 2)]:
        for task in tasks:
            cm = make_cost_model(cm_name)
            search = ms.search_strategy.EvolutionarySearch(
                population_size=pop, genetic_num_iters=iters
            )
            ctx = ms.TuneContext(
                mod=task.mod,
                target=task.target_object(),
                space_generator=space_generator("default"),
                search_strategy=search,
                task_name=task.name,
                rand_state=1,
                num_threads=2,
            )
            spaces = ctx.generate_design_space()
            db = ms.database.MemoryDatabase()
            ctx.search_strategy.pre_tuning(64, 16, spaces, db, cm)
            t = time.perf_counter()
            cands = ctx.search_strategy.generate_measure_candidates()
            dt = time.perf_counter() - t
            print(
                f"{cm_name:4s} pop {pop:3d}x{iters} {task.name:28s} first round of {len(cands)}: {dt:5.1f} s",
                flush=True,
            )
            ctx.search_strategy.post_tuning()
