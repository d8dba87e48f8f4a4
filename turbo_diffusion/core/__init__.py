"""Turbo's tensor math: partition, mutual redundancy, semantic value, information degree, merge and restore.

Plain torch with no diffusers import, so it can be tested and reused on any token grid.
"""

from .partition import Partition, WindowGrid, partition_tokens, random_offsets, window_grid
from .plan import MergePlan, plan_merge
from .scores import (
    global_query_attention,
    information_degree,
    mutual_redundancy,
    normalize_semantic,
    text_attention_mass,
)

__all__ = [
    "MergePlan",
    "Partition",
    "WindowGrid",
    "global_query_attention",
    "information_degree",
    "mutual_redundancy",
    "normalize_semantic",
    "partition_tokens",
    "plan_merge",
    "random_offsets",
    "text_attention_mass",
    "window_grid",
]
