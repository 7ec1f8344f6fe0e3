"""Divide and conquer: regions at single-tensor cut points, cuts and joins of partitions."""

from __future__ import annotations

import random

import pytest

from ago_search.devices import host_target
from ago_search.partition import Partition
from ago_search.pipeline import SEED_NAMES, import_model, prepare_model, seed_partition
from ago_search.search.regions import Regions, single_tensor_cuts
from ago_search.search.searcher import PlanSearcher
from ago_search.search.space import PlanSpace


@pytest.fixture(scope="module", params=["resnet18", "mobilenetv2"])
def model(request, zoo):
    entry = zoo[request.param]
    prepared = prepare_model(import_model(entry["path"], entry["inputs"]), host_target())
    space = PlanSpace(prepared.graph)
    seeds = {name: seed_partition(prepared, name).partition for name in SEED_NAMES}
    kept = [space.fit_to_limits(seeds[n]) for n in ("tvm", "dnnfusion")]
    space.regions = Regions.at_cut_points(space.index, kept, min_complex=3)
    return space, seeds, kept


def _crossing(index, i: int) -> set[int]:
    return {p for p in range(i + 1) if any(q > i for q in index.succ[p])}


def test_cut_points_have_one_tensor_across(model):
    space, _, _ = model
    index = space.index
    cuts = set(single_tensor_cuts(index))
    assert cuts
    for i in range(len(index) - 1):  # the definition, checked by brute force
        assert (i in cuts) == (len(_crossing(index, i)) == 1), i


def test_regions_hold_complex_ops_and_the_seeds_fit_them(model):
    space, seeds, kept = model
    # TVM's own fusion is within the limits as it is: its groups are never cut
    assert space.fit_to_limits(seeds["tvm"]) == seeds["tvm"]
    regions = space.regions
    assert regions.count >= 3
    assert list(regions.of_position) == sorted(regions.of_position)  # runs, in order
    for r in range(regions.count):
        positions = [p for p, x in enumerate(regions.of_position) if x == r]
        assert sum(space.index.complex[p] for p in positions) >= 3
        if r < regions.count - 1:
            assert len(_crossing(space.index, positions[-1])) == 1
    assert all(regions.respects(p) for p in kept)
    for partition in seeds.values():
        cut = regions.cut(partition)
        assert regions.respects(cut) and cut.num_groups >= partition.num_groups


def test_moves_stay_in_regions_and_joins_take_each_regions_best(model):
    space, seeds, _ = model
    regions = space.regions
    searcher = PlanSearcher(space, {n: regions.cut(p) for n, p in seeds.items()}, seed=1)
    rng = random.Random(0)
    cost: dict[frozenset, float] = {}

    def group_cost(partition: Partition, group: int) -> float:
        members = partition.groups[group]
        return cost.setdefault(members, rng.uniform(0.5, 1.5) * len(members) ** 0.8)

    def region_costs(partition: Partition) -> list[float]:
        costs = regions.costs(partition, lambda g: group_cost(partition, g))
        assert costs is not None
        return costs

    joins = 0
    for _ in range(12):
        seen = [region_costs(p) for _, p, _ in searcher.scored()]
        for suggestion in searcher.suggest(8):
            partition = suggestion.partition
            assert regions.respects(partition), suggestion.origin
            parts = region_costs(partition)
            if suggestion.origin == "join":
                joins += 1
                # in every region, the groups of the best plan there so far
                best = [min(costs[r] for costs in seen) for r in range(regions.count)]
                assert parts == pytest.approx(best)
            searcher.on_result(suggestion.key, sum(parts), parts)
    assert joins >= 1
    scores = [sum(region_costs(p)) for _, p, _ in searcher.scored()]
    assert searcher.best(1)[0][1] == pytest.approx(min(scores))
