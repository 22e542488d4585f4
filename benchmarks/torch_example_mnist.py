"""The peer: a faithful re-implementation of pytorch/examples `mnist/main.py`, timed until its test
accuracy first reaches a target (99.0 % by default).

What is kept from the example, unchanged: the Net (conv 1->32 3x3, conv 32->64 3x3, max-pool,
dropout .25, fc 9216->128, dropout .5, fc 128->10, log_softmax + NLL loss), Adadelta lr 1.0, StepLR
(step 1, gamma 0.7), batch 64, test batch 1000, `torch.manual_seed(1)`, torchvision's
`datasets.MNIST` with `ToTensor()` + `Normalize((0.1307,), (0.3081,))` served sample by sample
through a `DataLoader`, training on all 60,000 training images and testing on the official 10,000
after every epoch. On CPU the example passes neither `shuffle=True` nor workers to its loaders
(those are in its accelerator-only kwargs), so neither does this script by default (`--shuffle`
turns shuffling on).

The data is not downloaded: the four IDX files are read from a local folder (or a `file://` mirror,
e.g. `MNISTOPS_DATA_MIRROR`), gzipped or not, and laid out where `datasets.MNIST` expects them.

`--all-epochs` trains the example's whole recipe (14 epochs) and notes when the target was first
reached. The clock counts the training passes only (the `train()` calls); the per-epoch test passes are timed
apart and reported too. Nothing here asserts a time: it measures and prints.

    python benchmarks/torch_example_mnist.py --data file:///work/shared/datasets/mnist --json out.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.optim.lr_scheduler import StepLR

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = self.conv1(x)
        x = F.relu(x)
        x = self.conv2(x)
        x = F.relu(x)
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = self.fc1(x)
        x = F.relu(x)
        x = self.dropout2(x)
        x = self.fc2(x)
        output = F.log_softmax(x, dim=1)
        return output


def train(args, model, device, train_loader, optimizer, epoch):
    model.train()
    for batch_idx, (data, target) in enumerate(train_loader):
        data, target = data.to(device), target.to(device)
        optimizer.zero_grad()
        output = model(data)
        loss = F.nll_loss(output, target)
        loss.backward()
        optimizer.step()
        if args.log_interval and batch_idx % args.log_interval == 0:
            print('Train Epoch: {} [{}/{} ({:.0f}%)]\tLoss: {:.6f}'.format(
                epoch, batch_idx * len(data), len(train_loader.dataset),
                100. * batch_idx / len(train_loader), loss.item()), flush=True)


def test(model, device, test_loader):
    model.eval()
    test_loss = 0
    correct = 0
    with torch.no_grad():
        for data, target in test_loader:
            data, target = data.to(device), target.to(device)
            output = model(data)
            test_loss += F.nll_loss(output, target, reduction='sum').item()  # sum up batch loss
            pred = output.argmax(dim=1, keepdim=True)  # get the index of the max log-probability
            correct += pred.eq(target.view_as(pred)).sum().item()

    test_loss /= len(test_loader.dataset)
    acc = correct / len(test_loader.dataset)
    print('Test set: Average loss: {:.4f}, Accuracy: {}/{} ({:.2f}%)'.format(
        test_loss, correct, len(test_loader.dataset), 100. * acc), flush=True)
    return acc


def data_source() -> str:
    return os.environ.get("MNISTOPS_DATA_MIRROR") or str(Path(os.environ.get("MNISTOPS_HOME", ".mnistops")) / "data" / "mnist")


def stage_raw_files(source: str, root: Path) -> None:
    """Put the four decompressed IDX files where torchvision's `datasets.MNIST(root)` looks."""
    src = Path(urlparse(source).path) if source.startswith("file://") else Path(source)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        plain, packed = src / name, src / f"{name}.gz"
        if plain.is_file():
            shutil.copyfile(plain, raw / name)
        elif packed.is_file():
            with gzip.open(packed, "rb") as fin, open(raw / name, "wb") as fout:
                shutil.copyfileobj(fin, fout)
        else:
            sys.exit(f"torch_example_mnist: {name}[.gz] is not in {src} (set --data or MNISTOPS_DATA_MIRROR)")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="pytorch/examples mnist, timed to a target test accuracy")
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--test-batch-size', type=int, default=1000)
    parser.add_argument('--epochs', type=int, default=14)
    parser.add_argument('--lr', type=float, default=1.0)
    parser.add_argument('--gamma', type=float, default=0.7)
    parser.add_argument('--seed', type=int, default=1)
    parser.add_argument('--log-interval', type=int, default=0, help="batches between loss lines; 0: none")
    parser.add_argument('--target', type=float, default=0.99, help="stop once the test accuracy reaches this")
    parser.add_argument('--all-epochs', action='store_true',
                        help="train all --epochs (the example's whole recipe), noting when --target was first reached")
    parser.add_argument('--shuffle', action='store_true', help="shuffle the training set (the example does on accelerators only)")
    parser.add_argument('--data', default=None, help="folder or file:// URL holding the IDX files (default: $MNISTOPS_DATA_MIRROR)")
    parser.add_argument('--json', default=None, help="write the measurements here")
    args = parser.parse_args(argv)

    from torchvision import datasets, transforms

    torch.manual_seed(args.seed)
    device = torch.device("cpu")
    train_kwargs = {'batch_size': args.batch_size, 'shuffle': args.shuffle}
    test_kwargs = {'batch_size': args.test_batch_size}
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])

    with tempfile.TemporaryDirectory(prefix="torch-example-mnist-") as tmp:
        stage_raw_files(args.data or data_source(), Path(tmp))
        dataset1 = datasets.MNIST(tmp, train=True, download=False, transform=transform)
        dataset2 = datasets.MNIST(tmp, train=False, transform=transform)
        train_loader = torch.utils.data.DataLoader(dataset1, **train_kwargs)
        test_loader = torch.utils.data.DataLoader(dataset2, **test_kwargs)

        model = Net().to(device)
        optimizer = optim.Adadelta(model.parameters(), lr=args.lr)
        scheduler = StepLR(optimizer, step_size=1, gamma=args.gamma)
        train_s = test_s = 0.0
        epochs, reached, reached_train_s = [], None, None
        for epoch in range(1, args.epochs + 1):
            t0 = time.perf_counter()
            train(args, model, device, train_loader, optimizer, epoch)
            t1 = time.perf_counter()
            acc = test(model, device, test_loader)
            t2 = time.perf_counter()
            scheduler.step()
            train_s, test_s = train_s + (t1 - t0), test_s + (t2 - t1)
            epochs.append({"epoch": epoch, "test_acc": acc, "train_s": t1 - t0, "test_s": t2 - t1})
            print(f"epoch {epoch}: train {t1 - t0:.1f} s, test {t2 - t1:.1f} s, test acc {acc:.4f}", flush=True)
            if acc >= args.target and reached is None:
                reached, reached_train_s = epoch, train_s
                if not args.all_epochs:
                    break

    result = {"target": args.target, "reached_epoch": reached, "reached_train_s": reached_train_s,
              "test_acc": epochs[-1]["test_acc"], "train_s": train_s, "test_s": test_s, "epochs": epochs, "threads": torch.get_num_threads(),
              "shuffle": args.shuffle}
    if reached:
        print(f"reached {args.target:.1%} test accuracy after {reached} epoch(s): {reached_train_s:.1f} s training; "
              f"{len(epochs)} epoch(s): {epochs[-1]['test_acc']:.2%}, {train_s:.1f} s training (+ {test_s:.1f} s of test passes)")
    else:
        print(f"did not reach {args.target:.1%} in {args.epochs} epochs ({train_s:.1f} s training)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
