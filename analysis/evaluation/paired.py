"""Paired comparisons of conditions evaluated on the same prompts: exact McNemar tests (more in later commits).

Every comparison in prunescope is paired: the conditions (unpruned, pruned, random masks; or a patched and
an unpatched prompt) answer the very same prompts, so only the prompts whose outcome differs carry evidence.
"""

from __future__ import annotations

from math import comb


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts: prompts where only the first condition
    succeeds and prompts where only the second does. Under the null each discordant prompt goes either way
    with probability 1/2, so p = min(1, 2 P(X <= min(b, c))) for X ~ Binomial(b + c, 1/2); 1 when b + c = 0."""
    if only_first < 0 or only_second < 0:
        raise ValueError("discordant counts must be >= 0")
    total = only_first + only_second
    if total == 0:
        return 1.0
    tail = sum(comb(total, i) for i in range(min(only_first, only_second) + 1))
    return min(1.0, 2 * tail / 2**total)
