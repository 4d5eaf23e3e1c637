"""Digit classification with a small convnet, in the style of pytorch/examples' mnist.

The data are scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes), so
nothing is downloaded. ``--bug NAME`` plants a common mistake:

* ``no-zero-grad``: ``optimizer.zero_grad()`` is left out of the training loop, so the
  gradients of every batch pile up in ``.grad``.
* ``softmax``: the network's forward ends in ``F.softmax`` and the loss is still
  ``F.cross_entropy``, i.e. cross-entropy computed on probabilities instead of logits.
"""

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from sklearn.datasets import load_digits
from torch.optim.lr_scheduler import StepLR
from torch.utils.data import DataLoader, TensorDataset

BUGS = ("no-zero-grad", "softmax")


class Net(nn.Module):
    def __init__(self, softmax_output=False):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)
        self.softmax_output = softmax_output

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        x = self.fc2(x)
        if self.softmax_output:
            # BUG (--bug softmax): probabilities go into F.cross_entropy, which expects logits
            x = F.softmax(x, dim=1)
        return x


def load_data(seed, test_fraction=0.2):
    """The 8x8 digits as (N, 1, 8, 8) float tensors, normalised, split into train and test."""
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    targets = torch.tensor(digits.target, dtype=torch.long)
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    images, targets = images[perm], targets[perm]
    n_test = int(len(images) * test_fraction)
    train_x, train_y = images[n_test:], targets[n_test:]
    test_x, test_y = images[:n_test], targets[:n_test]
    mean, std = train_x.mean(), train_x.std()
    train_x = (train_x - mean) / std
    test_x = (test_x - mean) / std
    return TensorDataset(train_x, train_y), TensorDataset(test_x, test_y)


def train(args, model, device, train_loader, optimizer, epoch):
    model.train()
    total_loss = 0.0
    n_batches = 0
    for batch_idx, (data, target) in enumerate(train_loader):
        if args.max_batches and batch_idx >= args.max_batches:
            break
        data, target = data.to(device), target.to(device)
        if args.bug != "no-zero-grad":
            optimizer.zero_grad()
        # BUG (--bug no-zero-grad): without zero_grad() the gradients accumulate across batches
        output = model(data)
        loss = F.cross_entropy(output, target)
        loss.backward()
        optimizer.step()
        total_loss += loss.item()
        n_batches += 1
        if batch_idx % args.log_interval == 0:
            print(
                f"Train Epoch: {epoch} [{batch_idx * len(data)}/{len(train_loader.dataset)} "
                f"({100.0 * batch_idx / len(train_loader):.0f}%)]\tLoss: {loss.item():.6f}"
            )
        if args.dry_run:
            break
    return total_loss / max(n_batches, 1)


def test(model, device, test_loader):
    model.eval()
    test_loss = 0.0
    correct = 0
    with torch.no_grad():
        for data, target in test_loader:
            data, target = data.to(device), target.to(device)
            output = model(data)
            test_loss += F.cross_entropy(output, target, reduction="sum").item()
            pred = output.argmax(dim=1, keepdim=True)
            correct += pred.eq(target.view_as(pred)).sum().item()
    n = len(test_loader.dataset)
    test_loss /= n
    accuracy = 100.0 * correct / n
    print(f"\nTest set: Average loss: {test_loss:.4f}, Accuracy: {correct}/{n} ({accuracy:.0f}%)\n")
    return test_loss, accuracy


def main():
    parser = argparse.ArgumentParser(description="PyTorch digits (8x8 MNIST-like) example")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=64,
        metavar="N",
        help="input batch size for training (default: 64)",
    )
    parser.add_argument(
        "--test-batch-size",
        type=int,
        default=500,
        metavar="N",
        help="input batch size for testing (default: 500)",
    )
    parser.add_argument(
        "--epochs", type=int, default=3, metavar="N", help="number of epochs to train (default: 3)"
    )
    parser.add_argument(
        "--max-batches",
        type=int,
        default=0,
        metavar="N",
        help="stop each epoch after N batches (default: 0, the whole training set)",
    )
    parser.add_argument(
        "--lr", type=float, default=1.0, metavar="LR", help="learning rate (default: 1.0)"
    )
    parser.add_argument(
        "--gamma",
        type=float,
        default=0.7,
        metavar="M",
        help="learning rate step gamma (default: 0.7)",
    )
    parser.add_argument(
        "--no-cuda", action="store_true", default=False, help="disables CUDA training"
    )
    parser.add_argument(
        "--dry-run", action="store_true", default=False, help="quickly check a single pass"
    )
    parser.add_argument("--seed", type=int, default=1, metavar="S", help="random seed (default: 1)")
    parser.add_argument(
        "--log-interval",
        type=int,
        default=10,
        metavar="N",
        help="how many batches to wait before logging training status",
    )
    parser.add_argument(
        "--save-model", action="store_true", default=False, help="save the trained model"
    )
    parser.add_argument("--bug", choices=BUGS, default=None, help="plant a bug: " + ", ".join(BUGS))
    args = parser.parse_args()

    use_cuda = not args.no_cuda and torch.cuda.is_available()
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if use_cuda else "cpu")

    train_set, test_set = load_data(args.seed)
    train_loader = DataLoader(
        train_set,
        batch_size=args.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(args.seed),
    )
    test_loader = DataLoader(test_set, batch_size=args.test_batch_size)

    model = Net(softmax_output=args.bug == "softmax").to(device)
    optimizer = optim.Adadelta(model.parameters(), lr=args.lr)
    scheduler = StepLR(optimizer, step_size=1, gamma=args.gamma)

    for epoch in range(1, args.epochs + 1):
        start = time.time()
        train_loss = train(args, model, device, train_loader, optimizer, epoch)
        test_loss, accuracy = test(model, device, test_loader)
        scheduler.step()
        print(
            f"epoch {epoch}: train loss {train_loss:.4f}, test loss {test_loss:.4f}, "
            f"test accuracy {accuracy:.1f}% ({time.time() - start:.1f}s)"
        )

    if args.save_model:
        torch.save(model.state_dict(), "digits_cnn.pt")


if __name__ == "__main__":
    main()
