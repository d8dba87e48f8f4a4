"""Level location: pure functions from latent size and token count to a token grid."""

import pytest

from turbo_diffusion.levels import Level, grid_at, locate_from_reference, locate_level


@pytest.mark.parametrize(("latent", "factor", "grid"), [((64, 40), 1, (64, 40)), ((33, 17), 2, (17, 9)),
                                                        ((33, 17), 4, (9, 5)), ((1, 1), 8, (1, 1))])
def test_grid_at_rounds_up_like_stride_two_convolutions(latent, factor, grid):
    assert grid_at(latent, factor) == grid


def test_locate_level_finds_the_level_by_token_count():
    assert locate_level((40, 24), 40 * 24, 1, 2, 2) == Level(40, 24, 1, 2, 2)
    assert locate_level((40, 24), 20 * 12, 2, 2, 2) == Level(20, 12, 2, 2, 2)


def test_locate_level_leaves_deeper_levels_and_unknown_counts_unmerged():
    assert locate_level((40, 24), 20 * 12, 1, 2, 2) is None  # level 2, but only level 1 merges
    assert locate_level((40, 24), 7, 8, 2, 2) is None


def test_reference_route_assumes_square_levels():
    assert locate_from_reference(1024, 256, 2, 2, 2) == Level(16, 16, 2, 2, 2)
    assert locate_from_reference(1024, 256, 1, 2, 2) is None


def test_reference_route_falls_back_to_one_row_for_non_square_latents():
    level = locate_from_reference(40 * 24, 40 * 24, 1, 2, 2)
    assert level == Level(1, 960, 1, 4, 1, one_dimensional=True)
    assert locate_from_reference(40 * 24, 20 * 12, 2, 2, 2) is None
