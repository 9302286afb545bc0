"""Which order the sites are visited in: fixed, random once, random every round, or a given list."""

from __future__ import annotations

import random
from collections.abc import Sequence

from monai.utils import StrEnum, look_up_option

__all__ = ["SiteOrder", "round_orders"]


class SiteOrder(StrEnum):
    """``fixed``: as the sites are listed; ``random``: one seeded permutation, kept for every round;
    ``random_per_round``: a new seeded permutation every round (Chang et al.'s random-order variant). A list of
    site names is the fourth option: that order, every round."""

    FIXED = "fixed"
    RANDOM = "random"
    RANDOM_PER_ROUND = "random_per_round"


def round_orders(
    sites: Sequence[str], order: str | Sequence[str], rounds: int, seed: int = 0, skip: Sequence[str] = ()
) -> list[list[str]]:
    """The visiting order of every round, skipped sites left out (Chang et al.'s skipped institution).

    Args:
        sites: the training sites.
        order: a :class:`SiteOrder` name or an explicit list of distinct sites.
        rounds: how many rounds.
        seed: seeds the permutations.
        skip: sites left out.

    Raises:
        ValueError: naming the unknown site or order and listing the valid values.

    Example::

        >>> round_orders(["a", "b", "c"], "fixed", 2, skip=["b"])
        [['a', 'c'], ['a', 'c']]
    """
    sites = list(sites)
    unknown = [s for s in skip if s not in sites]
    if unknown:
        raise ValueError(f"skip names unknown site(s) {unknown}; sites are {sites}.")
    if isinstance(order, str):
        policy = look_up_option(order, SiteOrder)
        if policy == SiteOrder.FIXED:
            orders = [list(sites) for _ in range(rounds)]
        elif policy == SiteOrder.RANDOM:
            once = random.Random(seed).sample(sites, len(sites))
            orders = [list(once) for _ in range(rounds)]
        else:
            orders = [random.Random(seed * 1_000_003 + r).sample(sites, len(sites)) for r in range(rounds)]
    else:
        listed = list(order)
        unknown = [s for s in listed if s not in sites]
        if unknown or len(set(listed)) != len(listed):
            raise ValueError(
                f"order {listed} must list distinct sites among {sites} (unknown: {unknown}); or use one of "
                f"{[o.value for o in SiteOrder]}."
            )
        orders = [list(listed) for _ in range(rounds)]
    orders = [[s for s in o if s not in skip] for o in orders]
    if not orders or not orders[0]:
        raise ValueError(f"no site left to train on after skipping {list(skip)} of {sites}.")
    return orders
