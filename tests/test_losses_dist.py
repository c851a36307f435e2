"""EFL statistics under torch.distributed: 2 gloo processes equal one process that sees the whole batch."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from efldet.engine.dist import reduce_mean
from efldet.losses import EqualizedFocalLoss

NUM_CLASSES = 6
ROWS = 80
STEPS = 3


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    logits = torch.randn(ROWS, NUM_CLASSES, generator=gen) * 3.0
    labels = torch.randint(0, NUM_CLASSES + 1, (ROWS,), generator=gen)
    labels[torch.randperm(ROWS, generator=gen)[:6]] = -1
    return logits, labels


def foreground(labels: torch.Tensor) -> int:
    return int(((labels >= 0) & (labels < NUM_CLASSES)).sum())


def _worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        efl = EqualizedFocalLoss(NUM_CLASSES)
        for step in range(STEPS):
            logits, labels = global_batch(step)
            rows = slice(rank * ROWS // world_size, (rank + 1) * ROWS // world_size)   # this rank's half
            local_logits, local_labels = logits[rows].clone().requires_grad_(), labels[rows]
            normalizer = reduce_mean(foreground(local_labels)).clamp(min=1.0)          # averaged over ranks
            efl(local_logits, local_labels, normalizer=normalizer).backward()
        torch.save({"pos_grad": efl.pos_grad, "neg_grad": efl.neg_grad}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_match_one_process_on_the_whole_batch(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)

    single = EqualizedFocalLoss(NUM_CLASSES)
    for step in range(STEPS):
        logits, labels = global_batch(step)
        single(logits.clone().requires_grad_(), labels, normalizer=max(foreground(labels), 1)).backward()

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert torch.equal(ranks[0]["pos_grad"], ranks[1]["pos_grad"])
    assert torch.equal(ranks[0]["neg_grad"], ranks[1]["neg_grad"])
    torch.testing.assert_close(ranks[0]["pos_grad"], single.pos_grad, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(ranks[0]["neg_grad"], single.neg_grad, rtol=1e-5, atol=1e-8)
    assert (single.pos_neg_ratio < 1).any()
