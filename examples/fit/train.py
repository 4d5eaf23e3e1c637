"""Training with ``torchscope.training.fit``, on one process or on several under torchrun.

    python examples/fit/train.py --epochs 3
    torchrun --standalone --nproc-per-node 2 examples/fit/train.py --epochs 3

Under torchrun, ``fit`` wraps the model in DistributedDataParallel, gives the loaders a
DistributedSampler and averages the epoch metrics over the ranks; rank 0 prints the history.
The data are a synthetic 4-class problem made from a fixed seed, so nothing is downloaded.
"""

import argparse

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchscope.distributed import is_main_process, process_group
from torchscope.training import fit


def main():
    parser = argparse.ArgumentParser(description="torchscope.training.fit example")
    parser.add_argument("--epochs", type=int, default=3, metavar="N")
    parser.add_argument("--batch-size", type=int, default=64, metavar="N")
    parser.add_argument("--lr", type=float, default=0.05, metavar="LR")
    parser.add_argument("--checkpoint-dir", default=None, metavar="DIR")
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 16, generator=generator)
    y = x[:, :4].argmax(dim=1)
    train_set, val_set = TensorDataset(x[:1536], y[:1536]), TensorDataset(x[1536:], y[1536:])

    with process_group():  # sets up torchrun's process group, if any; destroys it at the end
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
        optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
        history = fit(
            model,
            DataLoader(train_set, batch_size=args.batch_size, shuffle=True),
            val_loader=DataLoader(val_set, batch_size=256),
            loss_fn=F.cross_entropy,
            optimizer=optimizer,
            epochs=args.epochs,
            checkpoint_dir=args.checkpoint_dir,
            progress=False,
        )
        if is_main_process():
            print(history)


if __name__ == "__main__":
    main()
