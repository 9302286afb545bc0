"""Several training processes: the helpers and the epoch sampler's shares."""

from __future__ import annotations

import pytest
import torch

from monai_continual.engines.epoch_sampler import EpochSampler
from monai_continual.utils import distributed


def test_one_process_sampler_and_helpers_are_unchanged():
    sampler = EpochSampler(7, seed=3)
    expected = [torch.randperm(7, generator=torch.Generator().manual_seed(3 * 100_003 + e)).tolist() for e in (0, 1)]
    assert [list(sampler), list(sampler)] == expected and len(sampler) == 7
    assert not distributed.is_distributed() and distributed.get_rank() == 0 and distributed.get_world_size() == 1
    assert distributed.on_main_rank(lambda: 5) == 5 and distributed.mean_over_ranks([1.0, 2.0]) == [1.0, 2.0]
    assert distributed.on_every_rank(False) is False and distributed.rank_device("cuda") == torch.device("cuda")
    assert distributed.init_distributed() is False  # no torchrun here
    distributed.barrier()


@pytest.mark.parametrize("n, world", [(5, 2), (4, 2), (1, 2), (7, 3), (2, 4)])
def test_sampler_shares_cover_the_epoch_in_equal_parts(n, world):
    shares = [list(EpochSampler(n, seed=1, epoch=2, rank=r, world_size=world)) for r in range(world)]
    whole = list(EpochSampler(n, seed=1, epoch=2))
    assert all(len(s) == len(EpochSampler(n, rank=r, world_size=world)) == -(-n // world)
               for r, s in enumerate(shares))
    interleaved = [i for column in zip(*shares) for i in column]
    assert interleaved[:n] == whole and set(interleaved[n:]) <= set(whole)  # padded with the permutation's start
    with pytest.raises(ValueError, match="rank"):
        EpochSampler(n, rank=world, world_size=world)
