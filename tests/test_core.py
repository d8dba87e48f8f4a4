import math

import pytest
import torch

from turbo_diffusion.core import (
    MergePlan,
    global_query_attention,
    information_degree,
    merged_count,
    mutual_redundancy,
    partition_tokens,
    plan_merge,
    random_offsets,
    seeded_offsets,
    text_attention_mass,
    window_grid,
)

SHAPES = [(40, 64), (64, 40), (33, 17), (30, 30), (1, 7), (5, 3)]


def _partition(h, w, radius=1, seed=0, sx=2, sy=2):
    grid = window_grid(h, w, sx, sy, radius)
    offsets = random_offsets(grid, torch.Generator().manual_seed(seed)) if seed is not None else None
    return partition_tokens(grid, offsets)


@pytest.mark.parametrize(("h", "w"), SHAPES)
def test_partition_covers_every_token_once_with_one_destination_per_window(h, w):
    part = _partition(h, w)
    every = torch.cat([part.dst, part.src]).sort().values
    assert torch.equal(every, torch.arange(h * w))
    rows, cols = h // min(2, h), w // min(2, w)
    assert part.dst.shape[0] == rows * cols
    # each destination lies inside its own window
    r, c = part.dst // w, part.dst % w
    window = (r // min(2, h)) * cols + c // min(2, w)
    assert torch.equal(window, torch.arange(rows * cols))


def test_fixed_partition_takes_top_left_corner():
    part = _partition(4, 6, seed=None)
    assert part.dst.tolist() == [0, 2, 4, 12, 14, 16]


@pytest.mark.parametrize(("h", "w"), SHAPES)
@pytest.mark.parametrize("radius", [None, 0, 1, 2])
def test_merge_then_restore_is_exact_for_duplicate_tokens(h, w, radius):
    # Every token of a 2x2 window (and each leftover token, attached to its nearest window) is a copy of one
    # vector, so whatever merges, it merges with an identical token.
    rows, cols = max(h // 2, 1), max(w // 2, 1)
    window = ((torch.arange(h)[:, None] // 2).clamp(max=rows - 1) * cols
              + (torch.arange(w)[None, :] // 2).clamp(max=cols - 1)).flatten()
    x = torch.randn(2, rows * cols, 16)[:, window]
    part = _partition(h, w, radius)
    plan = plan_merge(x, part, num_merge=int(0.5 * h * w))
    if radius == 0 and plan is not None:
        # radius 0 only compares with the own window's destination; leftovers may then match a copy, too.
        pass
    assert plan is not None
    torch.testing.assert_close(plan.restore(plan.merge(x)), x, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("h", "w"), SHAPES)
@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.7, 0.75, 0.9])
def test_merged_count_is_floor_ratio_n_capped_by_sources(h, w, ratio):
    part = _partition(h, w)
    x = torch.randn(3, h * w, 8)
    asked = math.floor(ratio * h * w)
    plan = plan_merge(x, part, asked)
    expected = min(asked, part.src.shape[0])
    if expected == 0:
        assert plan is None
        return
    assert plan.num_merged == expected
    assert plan.merge(x).shape == (3, h * w - expected, 8)
    assert plan.restore(plan.merge(x)).shape == x.shape
    assert plan.merged_positions.shape == (3, expected)


def test_merge_is_the_size_weighted_average_and_restore_copies_destination():
    # 1 x 4 grid, windows [0, 1] and [2, 3], destinations 0 and 2 (fixed corner), global matching.
    part = partition_tokens(window_grid(1, 4, 2, 1, None), None)
    x = torch.tensor([[[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.0, 3.0]]])
    plan = plan_merge(x, part, num_merge=2)
    merged = plan.merge(x)
    torch.testing.assert_close(merged, torch.tensor([[[0.95, 0.05], [0.0, 2.0]]]))
    torch.testing.assert_close(plan.sizes, torch.tensor([[2.0, 2.0]]))
    restored = plan.restore(merged * 10)
    torch.testing.assert_close(restored, torch.tensor([[[9.5, 0.5], [9.5, 0.5], [0.0, 20.0], [0.0, 20.0]]]))


def test_mutual_redundancy_is_max_cosine_and_its_destination():
    part = partition_tokens(window_grid(1, 4, 2, 1, None), None)  # dst 0, 2; src 1, 3
    x = torch.tensor([[[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [1.0, 1.0]]])
    red, match = mutual_redundancy(x, part)
    torch.testing.assert_close(red, torch.tensor([[0.8, 1 / math.sqrt(2)]]))
    assert match.tolist() == [[1, 0]]  # source 1 -> destination slot 1 (token 2); ties go to the first slot


def test_local_matching_only_sees_neighbouring_windows():
    # 2 x 8 grid, windows of 2x2: 4 windows in a row; radius 1 lets window 0 see windows 0 and 1 only.
    x = torch.zeros(1, 16, 3)
    x[0, :, 0] = 1.0  # everything alike ...
    far_dst, src = 6, 1  # ... except a source that matches exactly the destination of window 3 only
    x[0, [src, far_dst]] = torch.tensor([0.0, 1.0, 0.0])
    grid_local, grid_global = window_grid(2, 8, 2, 2, 1), window_grid(2, 8, 2, 2, None)
    r_local, m_local = mutual_redundancy(x, partition_tokens(grid_local, None))
    r_global, m_global = mutual_redundancy(x, partition_tokens(grid_global, None))
    i = partition_tokens(grid_local, None).src.tolist().index(src)
    assert m_global[0, i] == 3 and r_global[0, i] == pytest.approx(1.0)
    assert m_local[0, i] in (0, 1) and r_local[0, i] == pytest.approx(0.0)


def test_all_zero_tokens_give_no_nan():
    x = torch.zeros(2, 30 * 30, 8)
    part = _partition(30, 30)
    red, _ = mutual_redundancy(x, part)
    assert torch.isfinite(red).all()
    sem = global_query_attention(x, torch.zeros(2, 2, 4), 0.5, key_weight=torch.zeros(8, 8))
    assert torch.isfinite(sem).all()
    plan = plan_merge(x, part, 450, sem, alpha=1.0)
    assert torch.isfinite(plan.restore(plan.merge(x))).all()


def test_global_query_attention_on_a_hand_built_case():
    # Keys e1, e2, 0 and a mean query 2 * e1: logits (2, 0, 0); softmax / max = (1, e^-2, e^-2).
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]])
    query_mean = torch.tensor([[[2.0, 0.0]]])  # one head of size 2
    expected = torch.tensor([[1.0, math.exp(-2), math.exp(-2)]])
    folded = global_query_attention(tokens, query_mean, 1.0, key_weight=torch.eye(2))
    explicit = global_query_attention(tokens, query_mean, 1.0)
    torch.testing.assert_close(folded, expected)
    torch.testing.assert_close(explicit, expected)


def test_global_query_attention_folding_equals_explicit_keys():
    torch.manual_seed(0)
    x, w_k = torch.randn(2, 50, 12), torch.randn(12, 12)
    q_mean = torch.randn(2, 3, 4)
    folded = global_query_attention(x, q_mean, 0.5, key_weight=w_k)
    explicit = global_query_attention(x @ w_k.T, q_mean, 0.5)
    torch.testing.assert_close(folded, explicit)
    assert folded.amax(-1).allclose(torch.ones(2))


def test_semantic_value_is_resolution_independent():
    # The same picture at two resolutions (each token repeated 2x2) gets the same normalised values.
    torch.manual_seed(0)
    small = torch.randn(1, 8, 8, 6)
    big = small.repeat_interleave(2, 1).repeat_interleave(2, 2)
    q, w = torch.randn(1, 2, 3), torch.randn(6, 6)
    s_small = global_query_attention(small.flatten(1, 2), q, 0.5, key_weight=w).view(1, 8, 8)
    s_big = global_query_attention(big.flatten(1, 2), q, 0.5, key_weight=w).view(1, 16, 16)
    torch.testing.assert_close(s_big[:, ::2, ::2], s_small)


def test_text_attention_mass_counts_content_tokens_only():
    probs = torch.tensor([[[[0.5, 0.25, 0.25], [0.9, 0.1, 0.0]]]])  # B=1, H=1, N=2, L=3
    content = torch.tensor([False, True, True])
    torch.testing.assert_close(text_attention_mass(probs, content), torch.tensor([[1.0, 0.2]]))


def test_information_degree_and_semantics_change_the_choice():
    red = torch.tensor([[0.9, 0.8, 0.1]])
    sem = torch.tensor([[1.0, 0.0, 0.0]])
    torch.testing.assert_close(information_degree(red, sem, 0.5), torch.tensor([[0.4, 0.8, 0.1]]))
    assert torch.equal(information_degree(red, sem, 0.0), red)
    assert torch.equal(information_degree(red, None, 3.0), red)

    # Through the planner: 1 x 4 grid, destinations 0 and 2; source 1 copies token 0 (R = 1), source 3 is
    # 0.6-similar to token 2. ToMe merges source 1; a high semantic value on token 1 makes source 3 go instead.
    part = partition_tokens(window_grid(1, 4, 2, 1, None), None)
    x = torch.tensor([[[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.6, 0.8]]])
    semantic = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    assert plan_merge(x, part, 1).merged_positions.tolist() == [[1]]
    assert plan_merge(x, part, 1, semantic, alpha=0.3).merged_positions.tolist() == [[1]]
    assert plan_merge(x, part, 1, semantic, alpha=1.0).merged_positions.tolist() == [[3]]


@pytest.mark.parametrize(("h", "w"), [(32, 32), (40, 64), (33, 17)])
def test_alpha_zero_global_matching_reproduces_tomesd_choice(h, w):
    tomesd_merge = pytest.importorskip("tomesd.merge")
    torch.manual_seed(h * w)
    x = torch.randn(2, h * w, 16)
    r = int(0.5 * h * w)
    plan = plan_merge(x, _partition(h, w, radius=None, seed=None), r, torch.rand(2, h * w), alpha=0.0)

    merge, _ = tomesd_merge.bipartite_soft_matching_random2d(x, w, h, 2, 2, r, no_rand=True)
    positions = torch.arange(h * w, dtype=torch.float32).view(1, -1, 1).expand(2, -1, 1)
    out = merge(positions)  # [unmerged sources, destinations]
    n_dst = (h // 2) * (w // 2)
    kept_src = out[:, : out.shape[1] - n_dst, 0].long()
    for b in range(2):
        dst = set(range(h * w)) - set(_partition(h, w, radius=None, seed=None).src.tolist())
        tome_merged = set(range(h * w)) - dst - set(kept_src[b].tolist())
        assert set(plan.merged_positions[b].tolist()) == tome_merged


def test_same_generator_seed_same_partition():
    a, b = _partition(33, 17, seed=5), _partition(33, 17, seed=5)
    assert torch.equal(a.dst, b.dst) and torch.equal(a.src, b.src)
    assert not torch.equal(a.dst, _partition(33, 17, seed=6).dst)


def test_bfloat16_plan_round_trip():
    x = torch.randn(2, 30 * 30, 8).bfloat16()
    plan = plan_merge(x, _partition(30, 30), 450)
    y = plan.restore(plan.merge(x))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()


# -- the cached layout, seeding and plan reuse ------------------------------------------------------------------
def test_partition_hands_out_copies_not_the_cached_layout():
    grid = window_grid(4, 6, 2, 2, 1)
    base = grid.window_base.clone()
    part = partition_tokens(grid, None)
    part.dst.fill_(-1)
    part.src.fill_(-1)
    assert torch.equal(window_grid(4, 6, 2, 2, 1).window_base, base)


@pytest.mark.parametrize(("h", "w"), SHAPES)
def test_leftover_tokens_are_the_tokens_outside_full_windows_in_row_major_order(h, w):
    grid = window_grid(h, w, 2, 2, 1)
    sy, sx = min(2, h), min(2, w)
    rows, cols = h // sy, w // sx
    expected = [p for p in range(h * w) if p // w >= rows * sy or p % w >= cols * sx]
    assert grid.leftover.tolist() == expected


def test_others_lists_every_other_offset_of_the_window():
    grid = window_grid(4, 6, 3, 2, 1)
    k = grid.window_size
    assert grid.others.tolist() == [[j for j in range(k) if j != o] for o in range(k)]


def test_mul32_is_multiplication_modulo_two_to_the_32():
    from turbo_diffusion.core.seeding import _mul32

    x = torch.randint(0, 2**32, (1000,), dtype=torch.long, generator=torch.Generator().manual_seed(0))
    for constant in (0x85EBCA6B, 0xC2B2AE35, 0x9E3779B9, 3):
        assert _mul32(x, constant).tolist() == [(v * constant) % 2**32 for v in x.tolist()]


def test_fmix32_matches_murmur3_on_python_ints_and_tensors():
    from turbo_diffusion.core.seeding import fmix32

    def reference(h):
        h ^= h >> 16
        h = (h * 0x85EBCA6B) % 2**32
        h ^= h >> 13
        h = (h * 0xC2B2AE35) % 2**32
        return h ^ (h >> 16)

    values = [0, 1, 2, 12345, 2**31, 2**32 - 1]
    assert [fmix32(v) for v in values] == [reference(v) for v in values]
    assert fmix32(torch.tensor(values)).tolist() == [reference(v) for v in values]


def test_seeded_offsets_repeat_for_the_same_seed_and_timestep():
    grid = window_grid(33, 17, 2, 2, 1)
    a = seeded_offsets(grid, 7, torch.tensor(500.0))
    assert torch.equal(a, seeded_offsets(grid, 7, torch.tensor([500.0, 3.0])))  # the first timestep counts
    assert a.dtype == torch.long and a.shape == (grid.num_windows,)
    assert a.min() >= 0 and a.max() < grid.window_size


def test_seeded_offsets_change_with_seed_and_timestep():
    grid = window_grid(32, 32, 2, 2, 1)
    a = seeded_offsets(grid, 0, torch.tensor(500.0))
    assert not torch.equal(a, seeded_offsets(grid, 1, torch.tensor(500.0)))
    assert not torch.equal(a, seeded_offsets(grid, 0, torch.tensor(499.0)))
    assert not torch.equal(a, seeded_offsets(grid, 0, torch.tensor(500.25)))  # fractional timesteps too
    assert not torch.equal(a, seeded_offsets(grid, 2**64 - 1, torch.tensor(500.0)))


def test_seeded_offsets_are_close_to_uniform():
    grid = window_grid(64, 64, 2, 2, 1)  # 1024 windows
    counts = torch.stack([torch.bincount(seeded_offsets(grid, 0, torch.tensor(float(t))), minlength=4)
                          for t in range(0, 1000, 50)]).sum(0).float()
    expected = counts.sum() / 4
    assert ((counts - expected).abs() / expected).max() < 0.05


def test_plan_indices_rebuild_the_same_plan():
    x = torch.randn(2, 30 * 30, 8)
    plan = plan_merge(x, _partition(30, 30), 450)
    again = MergePlan.from_indices(plan.indices(), plan.num_tokens, plan.num_dst)
    assert torch.equal(again.restore(again.merge(x)), plan.restore(plan.merge(x)))
    assert [t.shape for t in MergePlan.empty_indices(2, 900, 450, torch.device("cpu"))] == \
        [t.shape for t in plan.indices()]


def test_plan_keeps_the_scores_it_was_chosen_by():
    x = torch.randn(2, 16 * 16, 8)
    part = _partition(16, 16)
    semantic = torch.rand(2, 256)
    plan = plan_merge(x, part, 100, semantic, alpha=0.5)
    redundancy, _ = mutual_redundancy(x, part)
    torch.testing.assert_close(plan.scores.redundancy, redundancy)
    torch.testing.assert_close(plan.scores.degree, redundancy - 0.5 * semantic[:, part.src])
    assert plan.scores.semantic is semantic and plan.scores.partition is part


def test_merged_count_keeps_one_destination_per_window():
    assert merged_count(100, 25, 0.5) == 50
    assert merged_count(100, 25, 0.9) == 75
    assert merged_count(3, 1, 0.1) == 0
