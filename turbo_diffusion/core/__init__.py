"""Turbo's tensor math: partition, seeding, mutual redundancy, semantic value, information degree, merge and
restore.

Plain torch with no diffusers import, so it can be tested and reused on any token grid.
"""

from .partition import Partition, WindowGrid, partition_tokens, random_offsets, window_count, window_grid
from .plan import MergePlan, PlanScores, merged_count, plan_merge
from .scores import (
    global_query_attention,
    information_degree,
    mutual_redundancy,
    normalize_semantic,
    text_attention_mass,
)
from .seeding import seeded_offsets

__all__ = [
    "MergePlan",
    "Partition",
    "PlanScores",
    "WindowGrid",
    "global_query_attention",
    "information_degree",
    "merged_count",
    "mutual_redundancy",
    "normalize_semantic",
    "partition_tokens",
    "plan_merge",
    "random_offsets",
    "seeded_offsets",
    "text_attention_mass",
    "window_count",
    "window_grid",
]
