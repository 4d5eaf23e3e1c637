"""Wiring bugs: parameters the optimizer never sees, and outputs that break the loss's contract.

Class 1, parameters nobody can see: layers kept in a plain list, dict or tuple attribute, and
tensors with ``requires_grad=True`` assigned as attributes instead of ``nn.Parameter``. The
optimizer is built from ``model.parameters()``, so those weights keep their initial values.

Class 2, loss-function contracts: probabilities fed to a loss that wants logits, a softmax over
the batch or time axis, logits clipped to be non-negative, and (N, 1) predictions against (N,)
targets in a regression loss, which broadcasts to (N, N).
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.training_zoo.harness import bug


def _split(x: torch.Tensor, y: torch.Tensor, n_train: int) -> tuple[TensorDataset, TensorDataset]:
    order = torch.randperm(len(x))
    x, y = x[order], y[order]
    return TensorDataset(x[:n_train], y[:n_train]), TensorDataset(x[n_train:], y[n_train:])


def _digits(n_train: int = 1200) -> tuple[TensorDataset, TensorDataset]:
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    return _split(x, torch.tensor(data.target), n_train)


def _accuracy(model: nn.Module, dataset: TensorDataset) -> float:
    model.eval()
    with torch.no_grad():
        x, y = dataset.tensors
        return (model(x).argmax(dim=1) == y).float().mean().item()


# --- class 1: parameters nobody can see -------------------------------------------------------


@bug(
    "unregistered_module",
    where=("hidden",),
    note="hidden layers kept in a plain Python list: model.parameters() misses them, they stay "
    "at their random init and only the head trains",
)
def wiring_mlp_layers_in_list(watch, bug=True):
    class MLP(nn.Module):
        def __init__(self, sizes):
            super().__init__()
            layers = [nn.Linear(a, b) for a, b in itertools.pairwise(sizes)]
            self.hidden = layers if bug else nn.ModuleList(layers)
            self.head = nn.Linear(sizes[-1], 10)

        def forward(self, x):
            for layer in self.hidden:
                x = torch.relu(layer(x))
            return self.head(x)

    train_set, test_set = _digits()
    loader = DataLoader(train_set, batch_size=64, shuffle=True)
    model = MLP([64, 32, 32])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def train(epoch):
        model.train()
        for data, target in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(data), target)
            loss.backward()
            optimizer.step()

    with watch(model, optimizer):
        for epoch in range(1, 7):
            train(epoch)
    return _accuracy(model, test_set)


@bug(
    "unregistered_module",
    where=("heads",),
    note="multi-task heads kept in a plain dict: the shared trunk trains, the heads never do",
)
def wiring_heads_in_dict(watch, bug=True):
    class MultiTask(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU())
            heads = {"digit": nn.Linear(32, 10), "parity": nn.Linear(32, 2)}
            self.heads = heads if bug else nn.ModuleDict(heads)

        def forward(self, x):
            h = self.trunk(x)
            return {name: head(h) for name, head in self.heads.items()}

    class Trainer:
        def __init__(self, model, lr=1e-3):
            self.model = model
            self.optimizer = torch.optim.Adam(model.parameters(), lr=lr)

        def training_step(self, x, y):
            out = self.model(x)
            return F.cross_entropy(out["digit"], y) + F.cross_entropy(out["parity"], y % 2)

        def fit(self, loader, epochs):
            with watch(self.model, self.optimizer):
                for _ in range(epochs):
                    self.model.train()
                    for x, y in loader:
                        self.optimizer.zero_grad()
                        self.training_step(x, y).backward()
                        self.optimizer.step()

    train_set, test_set = _digits()
    model = MultiTask()
    Trainer(model, lr=3e-3).fit(DataLoader(train_set, batch_size=64, shuffle=True), epochs=3)
    model.eval()
    with torch.no_grad():
        x, y = test_set.tensors
        return (model(x)["digit"].argmax(1) == y).float().mean().item()


@bug(
    "unregistered_module",
    where=("blocks",),
    note="conv blocks kept in a tuple attribute: the convolutions stay random, only the "
    "classifier trains",
)
def wiring_cnn_blocks_tuple(watch, bug=True):
    def conv_block(c_in, c_out):
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))

    class SmallCNN(nn.Module):
        def __init__(self):
            super().__init__()
            blocks = (conv_block(1, 4), conv_block(4, 8))
            self.blocks = blocks if bug else nn.Sequential(*blocks)
            self.classifier = nn.Linear(8 * 2 * 2, 10)

        def forward(self, x):
            for block in self.blocks:
                x = block(x)
            return self.classifier(x.flatten(1))

    train_set, test_set = _digits()
    train_set = TensorDataset(train_set.tensors[0].view(-1, 1, 8, 8), train_set.tensors[1])
    test_set = TensorDataset(test_set.tensors[0].view(-1, 1, 8, 8), test_set.tensors[1])
    model = SmallCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    criterion = nn.CrossEntropyLoss()
    with watch(model, optimizer):
        for _ in range(4):
            model.train()
            for images, labels in DataLoader(train_set, batch_size=64, shuffle=True):
                optimizer.zero_grad()
                criterion(model(images), labels).backward()
                optimizer.step()
    return _accuracy(model, test_set)


@bug(
    "unregistered_tensor",
    where=("log_scale",),
    note="cosine classifier whose learnable temperature is a requires_grad tensor, not an "
    "nn.Parameter: logits stay in [-1, 1] and the loss cannot go down (accuracy barely "
    "moves, the test loss does)",
)
def wiring_temperature_tensor(watch, bug=True):
    class CosineClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
            self.prototypes = nn.Parameter(torch.randn(10, 32))
            scale = torch.zeros(1, requires_grad=True)
            self.log_scale = scale if bug else nn.Parameter(scale)

        def forward(self, x):
            z = F.normalize(self.encoder(x), dim=1)
            w = F.normalize(self.prototypes, dim=1)
            return self.log_scale.exp() * z @ w.t()

    train_set, test_set = _digits()
    model = CosineClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    with watch(model, optimizer):
        for _ in range(4):
            for x, y in DataLoader(train_set, batch_size=64, shuffle=True):
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    with torch.no_grad():
        x, y = test_set.tensors
        return F.cross_entropy(model(x), y).item()


@bug(
    "unregistered_tensor",
    where=("pos_embedding",),
    note="learned positional embedding created with torch.zeros(..., requires_grad=True): it "
    "never trains, so the transformer cannot tell positions apart",
)
def wiring_positional_embedding_tensor(watch, bug=True):
    vocab, length, dim = 6, 6, 32

    class TinyTransformer(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab, dim)
            pos = torch.zeros(1, length, dim, requires_grad=True)
            self.pos_embedding = pos if bug else nn.Parameter(pos)
            layer = nn.TransformerEncoderLayer(
                dim, 2, dim_feedforward=64, dropout=0.0, batch_first=True
            )
            self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
            self.head = nn.Linear(dim, vocab)

        def forward(self, tokens):
            h = self.encoder(self.embed(tokens) + self.pos_embedding)
            return self.head(h.mean(dim=1))

    tokens = torch.randint(0, vocab, (1000, length))
    labels = tokens[:, 0]  # which token came first
    train_set, test_set = _split(tokens, labels, 800)
    model = TinyTransformer()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    with watch(model, optimizer):
        for _ in range(5):
            model.train()
            for x, y in DataLoader(train_set, batch_size=80, shuffle=True):
                optimizer.zero_grad()
                F.cross_entropy(model(x), y).backward()
                optimizer.step()
    return _accuracy(model, test_set)


@bug(
    "unregistered_tensor",
    where=("gamma",),
    note="layer-scale vector on the residual branch made with torch.full(..., 1e-4, "
    "requires_grad=True): stuck at 1e-4, the residual MLP is switched off and the net "
    "stays almost linear",
)
def wiring_layer_scale_tensor(watch, bug=True):
    class ResidualMLP(nn.Module):
        def __init__(self, dim=32):
            super().__init__()
            self.stem = nn.Linear(2, dim)
            self.branch = nn.Sequential(nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, dim))
            gamma = torch.full((dim,), 1e-4, requires_grad=True)
            self.gamma = gamma if bug else nn.Parameter(gamma)
            self.head = nn.Linear(dim, 2)

        def forward(self, x):
            h = self.stem(x)
            h = h + self.gamma * self.branch(h)
            return self.head(h)

    radius = torch.rand(1000) * 2
    angle = torch.rand(1000) * 2 * math.pi
    points = torch.stack([radius * angle.cos(), radius * angle.sin()], dim=1)
    labels = (radius > 1).long()  # inner disc vs outer ring
    train_set, test_set = _split(points, labels, 800)
    model = ResidualMLP()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    with watch(model, optimizer):
        for _ in range(7):
            for x, y in DataLoader(train_set, batch_size=64, shuffle=True):
                optimizer.zero_grad()
                F.cross_entropy(model(x), y).backward()
                optimizer.step()
    return _accuracy(model, test_set)


# --- class 2: loss-function contracts ---------------------------------------------------------


@bug(
    "probabilities_into_logits_loss",
    note="the model ends in nn.Sigmoid() and the loss is BCEWithLogitsLoss: a second sigmoid "
    "squashes the output, gradients shrink and the loss cannot reach zero",
)
def wiring_sigmoid_into_bce_with_logits(watch, bug=True):
    data = load_breast_cancer()
    x = torch.tensor(data.data, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0)
    train_set, test_set = _split(x, torch.tensor(data.target, dtype=torch.float32), 450)
    layers = [nn.Linear(30, 16), nn.ReLU(), nn.Linear(16, 1)]
    model = nn.Sequential(*layers, nn.Sigmoid()) if bug else nn.Sequential(*layers)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    criterion = nn.BCEWithLogitsLoss()
    with watch(model, optimizer):
        for _ in range(5):
            for xb, yb in DataLoader(train_set, batch_size=32, shuffle=True):
                optimizer.zero_grad()
                loss = criterion(model(xb).squeeze(1), yb)
                loss.backward()
                optimizer.step()
    with torch.no_grad():
        xb, yb = test_set.tensors
        out = model(xb).squeeze(1)
        probs = out if bug else torch.sigmoid(out)
        return F.binary_cross_entropy(probs, yb).item()


@bug(
    "probabilities_into_logits_loss",
    "softmax_into_cross_entropy",
    note="forward returns F.softmax(...) and the training loop uses nn.CrossEntropyLoss, which "
    "applies log_softmax again: gradients flatten and learning crawls",
)
def wiring_softmax_into_cross_entropy(watch, bug=True):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(64, 128)
            self.fc2 = nn.Linear(128, 10)

        def forward(self, x):
            x = self.fc2(F.relu(self.fc1(x)))
            return F.softmax(x, dim=1) if bug else x

    train_set, test_set = _digits()
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    with watch(model, optimizer):
        for _ in range(3):
            for x, y in DataLoader(train_set, batch_size=32, shuffle=True):
                optimizer.zero_grad()
                criterion(model(x), y).backward()
                optimizer.step()
    return _accuracy(model, test_set)


@bug(
    "softmax_wrong_dim",
    note="pytorch/examples-style net whose forward ends in F.log_softmax(x, dim=0): it "
    "normalises over the batch, not over the classes, before F.nll_loss; batched test "
    "accuracy hides it, one image at a time the output is all zeros",
)
def wiring_log_softmax_dim0(watch, bug=True):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 8, 3, 1)
            self.fc1 = nn.Linear(8 * 3 * 3, 32)
            self.fc2 = nn.Linear(32, 10)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv1(x)), 2)
            x = self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))
            return F.log_softmax(x, dim=0 if bug else 1)

    train_set, test_set = _digits()
    model = Net()
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)

    def train(loader):
        model.train()
        for data, target in loader:
            optimizer.zero_grad()
            loss = F.nll_loss(model(data.view(-1, 1, 8, 8)), target)
            loss.backward()
            optimizer.step()

    def test(dataset):
        model.eval()
        with torch.no_grad():
            data, target = dataset.tensors
            return model(data.view(-1, 1, 8, 8)).argmax(dim=1).eq(target).float().mean().item()

    def predict(image):  # the demo app classifies one image at a time
        model.eval()
        with torch.no_grad():
            return model(image.view(1, 1, 8, 8)).argmax(dim=1).item()

    with watch(model, optimizer):
        for _ in range(4):
            train(DataLoader(train_set, batch_size=32, shuffle=True))
            test(test_set)
    images, labels = test_set.tensors[0][:200], test_set.tensors[1][:200]
    return sum(predict(x) == y for x, y in zip(images, labels.tolist(), strict=True)) / len(labels)


@bug(
    "softmax_wrong_dim",
    note="GRU language model: outputs are (batch, time, vocab) and log_softmax runs over "
    "dim=1, the time axis, before nll_loss on the flattened tokens; at generation, one "
    "token at a time, every log-probability is 0",
)
def wiring_lm_log_softmax_over_time(watch, bug=True):
    vocab, seq_len = 12, 16

    class CharRNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab, 16)
            self.rnn = nn.GRU(16, 32, batch_first=True)
            self.decoder = nn.Linear(32, vocab)

        def forward(self, tokens, hidden=None):
            out, hidden = self.rnn(self.embed(tokens), hidden)
            return F.log_softmax(self.decoder(out), dim=1 if bug else -1), hidden

    # sequences that count upwards modulo the vocabulary, from a random start
    start = torch.randint(0, vocab, (600, 1))
    steps = torch.arange(seq_len + 1).unsqueeze(0)
    text = (start + steps + (torch.rand(600, seq_len + 1) < 0.1).long()) % vocab
    inputs, targets = text[:, :-1], text[:, 1:]
    train_set, test_set = _split(inputs, targets, 500)
    model = CharRNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    with watch(model, optimizer):
        for _ in range(3):
            model.train()
            for x, y in DataLoader(train_set, batch_size=25, shuffle=True):
                optimizer.zero_grad()
                log_probs, _ = model(x)
                loss = F.nll_loss(log_probs.reshape(-1, vocab), y.reshape(-1))
                loss.backward()
                optimizer.step()
    model.eval()
    with torch.no_grad():  # generation feeds one token at a time and carries the state
        x, y = test_set.tensors
        hidden, correct = None, 0
        for t in range(seq_len):
            log_probs, hidden = model(x[:, t : t + 1], hidden)
            correct += (log_probs[:, -1].argmax(-1) == y[:, t]).sum().item()
        return correct / y.numel()


@bug(
    "clipped_logits",
    note="nn.ReLU() left after the last Linear: logits can never go negative and a class "
    "whose output dies gets no gradient",
)
def wiring_relu_logits(watch, bug=True):
    train_set, test_set = _digits()
    layers = [nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)]
    model = nn.Sequential(*layers, nn.ReLU()) if bug else nn.Sequential(*layers)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    with watch(model, optimizer):
        for _ in range(4):
            model.train()
            for x, y in DataLoader(train_set, batch_size=64, shuffle=True):
                optimizer.zero_grad()
                criterion(model(x), y).backward()
                optimizer.step()
    return _accuracy(model, test_set)


@bug(
    "clipped_logits",
    note="binary classifier returns logit.clamp(min=0) into BCEWithLogitsLoss: the negative "
    "class can only reach p=0.5 and gets no gradient once clipped",
)
def wiring_clamp_logits_binary(watch, bug=True):
    class Detector(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(20, 32), nn.Tanh())
            self.out = nn.Linear(32, 1)

        def forward(self, x):
            logit = self.out(self.body(x)).squeeze(-1)
            return logit.clamp(min=0) if bug else logit

    x = torch.randn(800, 20)
    y = ((x[:, :5].sum(1) + 0.3 * torch.randn(800)) > 0).float()
    train_set, test_set = _split(x, y, 600)
    model = Detector()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    criterion = nn.BCEWithLogitsLoss()
    with watch(model, optimizer):
        for _ in range(5):
            for xb, yb in DataLoader(train_set, batch_size=50, shuffle=True):
                optimizer.zero_grad()
                criterion(model(xb), yb).backward()
                optimizer.step()
    with torch.no_grad():
        xb, yb = test_set.tensors
        return criterion(model(xb), yb).item()


@bug(
    "clipped_logits",
    note="forum-style net: F.relu applied to the last layer's output before log_softmax and "
    "nll_loss; classes whose output dies can never win",
)
def wiring_relu_before_log_softmax(watch, bug=True):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(64, 48)
            self.fc2 = nn.Linear(48, 10)

        def forward(self, x):
            x = F.relu(self.fc1(x))
            x = self.fc2(x)
            if bug:
                x = F.relu(x)
            return F.log_softmax(x, dim=1)

    train_set, test_set = _digits()
    model = Net()
    optimizer = torch.optim.Adagrad(model.parameters(), lr=0.05)
    with watch(model, optimizer):
        for _ in range(3):
            model.train()
            for data, target in DataLoader(train_set, batch_size=32, shuffle=True):
                optimizer.zero_grad()
                F.nll_loss(model(data), target).backward()
                optimizer.step()
    return _accuracy(model, test_set)


def _diabetes(n_train: int = 350) -> tuple[TensorDataset, TensorDataset]:
    data = load_diabetes()
    x = torch.tensor(data.data, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0)
    y = torch.tensor(data.target, dtype=torch.float32)
    return _split(x, (y - y.mean()) / y.std(), n_train)


@bug(
    "loss_broadcast",
    note="Kaggle-style regression: the model returns (N, 1), the target is (N,), and "
    "nn.MSELoss broadcasts them to (N, N): the net learns to predict the mean",
)
def wiring_loss_broadcast_mse(watch, bug=True):
    train_set, test_set = _diabetes()
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    criterion = nn.MSELoss()
    with watch(model, optimizer):
        for _ in range(12):
            for xb, yb in DataLoader(train_set, batch_size=32, shuffle=True):
                pred = model(xb)
                loss = criterion(pred if bug else pred.squeeze(1), yb)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    with torch.no_grad():
        xb, yb = test_set.tensors
        return F.mse_loss(model(xb).squeeze(1), yb).item()


@bug(
    "loss_broadcast",
    note="nn.L1Loss between a (N, 1) prediction and a (N,) target: broadcasts to (N, N)",
)
def wiring_loss_broadcast_l1(watch, bug=True):
    x = torch.randn(1000, 8)
    y = x @ torch.randn(8) + 0.5 * torch.sin(3 * x[:, 0])
    train_set, test_set = _split(x, y, 800)
    model = nn.Sequential(nn.Linear(8, 64), nn.SiLU(), nn.Linear(64, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    criterion = nn.L1Loss()

    def train_epoch():
        model.train()
        total = 0.0
        for xb, yb in DataLoader(train_set, batch_size=50, shuffle=True):
            optimizer.zero_grad()
            out = model(xb)
            if not bug:
                out = out.view(-1)
            loss = criterion(out, yb)
            loss.backward()
            optimizer.step()
            total += loss.item()
        return total

    with watch(model, optimizer):
        for _ in range(10):
            train_epoch()
    with torch.no_grad():
        xb, yb = test_set.tensors
        return (model(xb).view(-1) - yb).abs().mean().item()


@bug(
    "loss_broadcast",
    note="LSTM forecaster: head gives (N, 1), the next value is (N,), nn.SmoothL1Loss "
    "broadcasts them",
)
def wiring_loss_broadcast_smooth_l1(watch, bug=True):
    class Forecaster(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(1, 24, batch_first=True)
            self.head = nn.Linear(24, 1)

        def forward(self, window):
            out, _ = self.lstm(window)
            return self.head(out[:, -1])

    t = torch.linspace(0, 60, 1300)
    series = torch.sin(t) + 0.5 * torch.sin(0.37 * t) + 0.05 * torch.randn(1300)
    windows = series.unfold(0, 21, 1)
    x, y = windows[:, :20].unsqueeze(-1), windows[:, 20]
    train_set, test_set = _split(x, y, 1000)
    model = Forecaster()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    criterion = nn.SmoothL1Loss()
    with watch(model, optimizer):
        for _ in range(4):
            for xb, yb in DataLoader(train_set, batch_size=64, shuffle=True):
                pred = model(xb)
                loss = criterion(pred, yb) if bug else criterion(pred.squeeze(-1), yb)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    with torch.no_grad():
        xb, yb = test_set.tensors
        return F.mse_loss(model(xb).squeeze(-1), yb).item()


@bug(
    "loss_broadcast",
    note="targets reshaped to (N, 1) during data prep while the model squeezes its output to "
    "(N,): nn.HuberLoss broadcasts (N,) against (N, 1)",
)
def wiring_loss_broadcast_huber(watch, bug=True):
    class Regressor(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 1))

        def forward(self, x):
            return self.net(x).squeeze(-1)

    class Trainer:
        def __init__(self, model, train_set):
            self.model = model
            self.loader = DataLoader(train_set, batch_size=32, shuffle=True)
            self.optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
            self.criterion = nn.HuberLoss(delta=1.0)

        def train(self, epochs):
            with watch(self.model, self.optimizer):
                for _ in range(epochs):
                    self.model.train()
                    for batch in self.loader:
                        self.step(*batch)

        def step(self, features, target):
            loss = self.criterion(self.model(features), target)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()

    train_set, test_set = _diabetes()
    x, y = train_set.tensors
    train_set = TensorDataset(x, y.unsqueeze(1) if bug else y)
    model = Regressor()
    Trainer(model, train_set).train(epochs=12)
    with torch.no_grad():
        xb, yb = test_set.tensors
        return F.mse_loss(model(xb), yb).item()


@bug(
    "softmax_wrong_dim",
    note="a sequence classifier over (batch, time, classes) with nn.LogSoftmax() left without "
    "a dim: for 3-D input PyTorch's implicit choice is dim 0, the batch",
)
def wiring_log_softmax_module_implicit_dim(watch, bug=True):
    classes, seq_len = 4, 10

    class FrameTagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(3, 24, kernel_size=3, padding=1)
            self.classify = nn.Linear(24, classes)
            self.log_probs = nn.LogSoftmax() if bug else nn.LogSoftmax(dim=-1)

        def forward(self, frames):  # (batch, time, 3)
            h = torch.relu(self.conv(frames.transpose(1, 2))).transpose(1, 2)
            return self.log_probs(self.classify(h))  # (batch, time, classes)

    g = torch.Generator().manual_seed(0)
    frames = torch.randn(400, seq_len, 3, generator=g)
    labels = (frames[..., 0] > 0).long() + 2 * (frames[..., 1] > 0).long()  # per frame
    train_set, test_set = _split(frames, labels, 320)
    model = FrameTagger()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with watch(model, optimizer):
        for _ in range(5):
            for x, y in DataLoader(train_set, batch_size=16, shuffle=True):
                optimizer.zero_grad()
                F.nll_loss(model(x).reshape(-1, classes), y.reshape(-1)).backward()
                optimizer.step()
    x, y = test_set.tensors
    with torch.no_grad():  # one clip at a time, as at inference
        return sum(
            (model(x[i : i + 1]).argmax(-1) == y[i : i + 1]).float().mean().item()
            for i in range(len(x))
        ) / len(x)
