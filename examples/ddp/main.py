"""Data-parallel training with DistributedDataParallel, in the style of pytorch/examples' ddp.

Run it with torchrun (gloo on the CPU, nccl on GPUs); one process per rank:

    torchrun --standalone --nproc-per-node 2 examples/ddp/main.py --epochs 2

The data are a synthetic 4-class problem made from a fixed seed (the class is the largest of
the first four features), so nothing is downloaded and every rank sees the same dataset;
``DistributedSampler`` gives each rank its own part of it. The script knows nothing about
torchscope: ``torchrun ... -m torchscope run examples/ddp/main.py`` watches it unchanged.
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler


def make_dataset(n=2048, features=16, classes=4):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, features, generator=generator)
    return TensorDataset(x, x[:, :classes].argmax(dim=1))


def main():
    parser = argparse.ArgumentParser(description="DistributedDataParallel example")
    parser.add_argument("--epochs", type=int, default=2, metavar="N")
    parser.add_argument("--batch-size", type=int, default=64, metavar="N", help="per rank")
    parser.add_argument("--lr", type=float, default=0.05, metavar="LR")
    args = parser.parse_args()

    use_cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    rank, local_rank = dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(0)  # the same initial weights on every rank

    dataset = make_dataset()
    sampler = DistributedSampler(dataset, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler)

    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4)).to(device)
    ddp_model = DDP(model, device_ids=[local_rank] if use_cuda else None)
    optimizer = torch.optim.SGD(ddp_model.parameters(), lr=args.lr, momentum=0.9)

    for epoch in range(1, args.epochs + 1):
        sampler.set_epoch(epoch)
        total, batches = torch.zeros((), device=device), 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            loss = F.cross_entropy(ddp_model(x), y)
            loss.backward()
            optimizer.step()
            total += loss.detach()
            batches += 1
        dist.all_reduce(total)
        if rank == 0:
            mean = total.item() / (batches * dist.get_world_size())
            print(f"epoch {epoch}: train loss {mean:.4f}")

    dist.destroy_process_group()


if __name__ == "__main__":
    main()
