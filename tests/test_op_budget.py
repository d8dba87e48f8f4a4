"""What Turbo dispatches per UNet step, counted exactly (issue 22).

On a launch-bound GPU every aten operation costs about the same whatever its size, so the budget is in operations.
Counts are deterministic and device-independent, which makes them fair to assert (unlike a timing). The budget is
written per merging block plus once per step, so it also bounds the real SD 1.5 (5 merging blocks: at most
5 * 56 + 56 = 336 added operations, the issue's target 400) and SDXL (10: at most 616, target 760);
benchmarks/op_count.py measures those.
"""

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from turbo_diffusion import TurboProcessor, apply_turbo, turbo_generation
from turbo_diffusion.bench.ops import OpCounter, count_ops

from .conftest import tiny_sd15_unet, tiny_sdxl_unet, unet_args

PER_STEP = 56  # the partition's seeded destinations and tables, the timestep
BUDGET_PER_BLOCK = {"default": 56, "alpha=0": 40, "kv": 56, "text": 72}
CONFIGS = {"default": {}, "alpha=0": {"alpha": 0.0}, "kv": {"mode": "kv"}, "text": {"semantic": "text"}}
UNETS = {"sd15": (tiny_sd15_unet, 3), "sdxl": (tiny_sdxl_unet, 6)}  # (builder, merging blocks)


def second_step(unet, args, kwargs) -> OpCounter:
    """The counter of the second UNet call of a generation (the first also fills caches)."""
    with turbo_generation(unet):
        count_ops(unet, args[0], torch.tensor(900), **kwargs)
        return count_ops(unet, args[0], torch.tensor(800), **kwargs)


def baseline(unet, args, kwargs) -> OpCounter:
    count_ops(unet, *args, **kwargs)
    return count_ops(unet, *args, **kwargs)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("arch", UNETS)
def test_added_operations_per_step_stay_within_the_budget(arch, config):
    make, blocks = UNETS[arch]
    unet = make()
    args, kwargs = unet_args(unet)
    plain = baseline(unet, args, kwargs)
    apply_turbo(unet, **CONFIGS[config])
    added = second_step(unet, args, kwargs).total - plain.total
    assert added <= blocks * BUDGET_PER_BLOCK[config] + PER_STEP


def test_a_plan_every_reuse_step_adds_only_merge_and_restore():
    unet = tiny_sd15_unet()
    args, kwargs = unet_args(unet)
    plain = baseline(unet, args, kwargs)
    apply_turbo(unet, plan_every=3)
    with turbo_generation(unet):
        planning = count_ops(unet, args[0], torch.tensor(900), **kwargs)
        reuse = count_ops(unet, args[0], torch.tensor(800), **kwargs)
    # per block: merge (two row gathers, an index_add_, a scale, two reshapes), restore (a gather, two reshapes)
    assert reuse.total - plain.total <= 3 * 9 + 4
    assert "aten.topk" in planning.counts and "aten.topk" not in reuse.counts


STATEFUL = {
    "default": {}, "alpha=0": {"alpha": 0.0}, "kv": {"mode": "kv"}, "text": {"semantic": "text"},
    "plan_every=2": {"plan_every": 2}, "plan_every=3": {"plan_every": 3}, "proportional": {"proportional_attn": True},
    "cross+mlp": {"merge_crossattn": True, "merge_mlp": True}, "global": {"match_radius": None},
    "fixed": {"use_rand": False}, "deeper": {"max_downsample": 2},
    "all": {"semantic": "text", "merge_crossattn": True, "merge_mlp": True, "plan_every": 2, "proportional_attn": True},
}


@pytest.mark.parametrize("config", STATEFUL)
def test_no_config_reads_a_device_value_on_the_host(config):
    """No .item(), bool(tensor), nonzero, ...: on a GPU each would stall the host until the device caught up."""
    unet = tiny_sd15_unet()
    apply_turbo(unet, **STATEFUL[config])
    (sample, _), kwargs = unet_args(unet, 24, 40)
    counters = [count_ops(unet, sample, torch.tensor(500), **kwargs)]  # a lone call
    with turbo_generation(unet):
        counters += [count_ops(unet, sample, torch.tensor(t), **kwargs) for t in (900, 800, 700, 600)]
    assert [c.syncs for c in counters] == [0] * 5
    assert all("aten._local_scalar_dense" not in c.counts for c in counters)


def test_the_bare_processor_reads_no_device_value_either():
    unet = tiny_sd15_unet()
    unet.set_attn_processor(TurboProcessor(plan_every=2, semantic="text", merge_crossattn=True))
    (sample, _), kwargs = unet_args(unet)
    with turbo_generation(unet):
        counters = [count_ops(unet, sample, torch.tensor(t), **kwargs) for t in (900, 800, 700)]
    assert [c.syncs for c in counters] == [0, 0, 0]


def test_profiler_labels_cost_nothing_unless_a_profiler_runs():
    unet = tiny_sd15_unet()
    apply_turbo(unet)
    args, kwargs = unet_args(unet)
    assert "aten._record_function_enter_new" not in count_ops(unet, *args, **kwargs).counts
    with torch.profiler.profile() as profiler, torch.no_grad():
        unet(*args, **kwargs)
    assert "turbo::plan" in {event.key for event in profiler.key_averages()}


def test_a_host_read_would_be_counted():
    """The counter sees what the tests above say is absent."""
    counter = count_ops(lambda: bool(torch.ones(1) > 0) and torch.tensor([1, 0]).nonzero())
    assert counter.syncs == 2


# -- CUDA graphs need static storage: checked on the CPU by looking at the graph dynamo captures ----------------
@pytest.mark.parametrize("config", ["plan_every=2", "text", "all"])
def test_compiled_graphs_mutate_only_static_storage(config):
    """CUDA graph trees refuse to capture a graph that writes into an input unless that input's address is static
    (parameters, buffers, tensors marked with mark_static_address). Turbo's only writes are the plans and text
    mass it keeps from step to step: the graph must write nothing else, and those must be static."""
    torch._dynamo.reset()
    unet = tiny_sd15_unet()
    apply_turbo(unet, **STATEFUL[config])
    (sample, _), kwargs = unet_args(unet)
    mutated, static = [], []

    def backend(gm, example_inputs):
        placeholders = {node: value for node, value in
                        zip([n for n in gm.graph.nodes if n.op == "placeholder"], example_inputs, strict=True)}
        for node in gm.graph.nodes:
            if node.op == "call_method" and node.target == "copy_" and node.args[0] in placeholders:
                tensor = placeholders[node.args[0]]
                mutated.append(node.args[0].name)
                static.append(getattr(tensor, "_dynamo_static_input_type", None) is not None)
        return gm.forward

    counter = CompileCounter()

    def counted(gm, example_inputs):
        counter(gm, example_inputs)
        return backend(gm, example_inputs)

    compiled = torch.compile(unet, backend=counted, fullgraph=True)
    with turbo_generation(unet), torch.no_grad():
        for t in (900, 800, 700):
            compiled(sample, torch.tensor(t), **kwargs)
    assert counter.frame_count == 1
    assert mutated and all(static), list(zip(mutated, static, strict=True))
    torch._dynamo.reset()
