"""Zoo: the classic training-loop bugs, written the way users make them.

A ``.detach()`` in the middle of the forward, a hand-written log loss that meets log(0), a
masked mean that divides by zero, a learning rate that blows the loss up, ReLUs killed by their
bias or by one huge step, ``model.eval()`` left on after validation, a frozen backbone that still
moves, a forgotten ``optimizer.zero_grad()`` and BatchNorm fed a last batch of one. Each bug
comes with its fixed twin (``bug=False``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits
from sklearn.preprocessing import StandardScaler
from torch.utils.data import DataLoader, TensorDataset

from tests.training_zoo.harness import bug


def _digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    return X[:1200], y[:1200], X[1200:], y[1200:]


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


# -- no_grad: the graph is cut inside the forward -------------------------------------------------


@bug(
    "no_grad",
    "not_updated",
    where=("backbone",),
    note="L2-normalised the features with numpy in the forward: the backbone gets no gradient",
)
def classic_numpy_in_forward(watch, bug=True):
    X_tr, y_tr, X_te, y_te = _digits()

    class EmbeddingNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32))
            self.classifier = nn.Linear(32, 10)

        def forward(self, x):
            feats = self.backbone(x)
            if bug:
                f = feats.detach().cpu().numpy()
                f = f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-8)
                feats = torch.from_numpy(f)
            else:
                feats = F.normalize(feats, dim=1)
            return self.classifier(feats * 10.0)

    model = EmbeddingNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    loader = DataLoader(TensorDataset(X_tr, y_tr), batch_size=32, shuffle=True)
    with watch(model, optimizer):
        for _ in range(3):
            model.train()
            for xb, yb in loader:
                optimizer.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                optimizer.step()
    return _accuracy(model, X_te, y_te)


@bug(
    "no_grad",
    "not_updated",
    where=("conv1", "conv2"),
    note="`x = self.pool(F.relu(self.conv2(x))).data` (old tutorial style) cuts the convs off",
)
def classic_dot_data_in_cnn(watch, bug=True):
    X_tr, y_tr, X_te, y_te = _digits()
    X_tr, X_te = X_tr.view(-1, 1, 8, 8), X_te.view(-1, 1, 8, 8)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
            self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
            self.pool = nn.MaxPool2d(2)
            self.fc = nn.Linear(32 * 4 * 4, 10)

        def forward(self, x):
            x = F.relu(self.conv1(x))
            x = self.pool(F.relu(self.conv2(x)))
            if bug:
                x = x.data
            return self.fc(torch.flatten(x, 1))

    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = DataLoader(TensorDataset(X_tr, y_tr), batch_size=32, shuffle=True)

    def train(epoch):
        model.train()
        for data, target in loader:
            optimizer.zero_grad()
            loss = F.nll_loss(F.log_softmax(model(data), dim=1), target)
            loss.backward()
            optimizer.step()

    with watch(model, optimizer):
        for epoch in range(1, 3):
            train(epoch)
    return _accuracy(model, X_te, y_te)


# -- non-finite values mid-run --------------------------------------------------------------------


@bug(
    "nonfinite_loss",
    "nan_grad",
    "inf_grad",
    note="hand-written BCE on sigmoid outputs: once a sigmoid rounds to 1.0, 0 * log(0) = NaN",
)
def classic_handwritten_bce_log_zero(watch, bug=True):
    X, y = load_breast_cancer(return_X_y=True)
    X = torch.tensor(StandardScaler().fit_transform(X), dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.float32)

    model = nn.Sequential(nn.Linear(30, 64), nn.ReLU(), nn.Linear(64, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def bce(logits, target):
        if not bug:
            return F.binary_cross_entropy_with_logits(logits, target)
        p = torch.sigmoid(logits)
        return -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()

    loader = DataLoader(TensorDataset(X[:450], y[:450]), batch_size=30, shuffle=True)
    with watch(model, optimizer):
        for _ in range(12):
            for xb, yb in loader:
                optimizer.zero_grad()
                loss = bce(model(xb).squeeze(1), yb)
                loss.backward()
                optimizer.step()
    with torch.no_grad():
        pred = model(X[450:]).squeeze(1) > 0
    return (pred.float() == y[450:]).float().mean().item()


@bug(
    "nonfinite_loss",
    "nan_grad",
    note="semi-supervised masked loss divided by mask.sum(): a batch with no labelled "
    "sample gives 0/0",
)
def classic_masked_mean_div_zero(watch, bug=True):
    X, y = load_diabetes(return_X_y=True)
    X = torch.tensor(StandardScaler().fit_transform(X), dtype=torch.float32)
    y = torch.tensor((y - y.mean()) / y.std(), dtype=torch.float32)
    labelled = torch.rand(len(X)) < 0.15  # only some patients have the measurement

    class Regressor(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))

        def forward(self, x):
            return self.body(x).squeeze(-1)

    def masked_mse(pred, target, mask):
        err = (pred - target) ** 2 * mask
        if bug:
            return err.sum() / mask.sum()
        return err.sum() / mask.sum().clamp(min=1)

    model = Regressor()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = DataLoader(
        TensorDataset(X[:360], y[:360], labelled[:360].float()), batch_size=8, shuffle=True
    )
    with watch(model, optimizer):
        for _ in range(3):
            for xb, yb, mb in loader:
                optimizer.zero_grad()
                loss = masked_mse(model(xb), yb, mb)
                loss.backward()
                optimizer.step()
    with torch.no_grad():
        return F.mse_loss(model(X[360:]), y[360:]).item()


@bug(
    "exploding",
    "nonfinite_loss",
    "nan_grad",
    "inf_grad",
    "nonfinite_activation",
    note="lr=1.0 with SGD+momentum on a regression MLP: the loss blows up to inf/NaN",
)
def classic_lr_too_large(watch, bug=True):
    X, y = load_diabetes(return_X_y=True)
    X = torch.tensor(StandardScaler().fit_transform(X), dtype=torch.float32)
    y = torch.tensor((y - y.mean()) / y.std(), dtype=torch.float32).unsqueeze(1)
    model = nn.Sequential(
        nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)
    )
    lr = 1.0 if bug else 1e-2
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    criterion = nn.MSELoss()
    loader = DataLoader(TensorDataset(X[:350], y[:350]), batch_size=32, shuffle=True)
    with watch(model, optimizer):
        for _ in range(10):
            for xb, yb in loader:
                optimizer.zero_grad()
                loss = criterion(model(xb), yb)
                loss.backward()
                optimizer.step()
    with torch.no_grad():
        return criterion(model(X[350:]), y[350:]).item()


# -- dead ReLUs -----------------------------------------------------------------------------------


@bug(
    "dead_activation",
    where=("relu1", "relu2"),
    note="biases initialised to -2 'for sparse activations': nearly every ReLU is dead",
)
def classic_negative_bias_init(watch, bug=True):
    X_tr, y_tr, X_te, y_te = _digits()

    class SparseMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.relu1 = nn.Linear(64, 128), nn.ReLU()
            self.fc2, self.relu2 = nn.Linear(128, 64), nn.ReLU()
            self.fc3 = nn.Linear(64, 10)
            for fc in (self.fc1, self.fc2):
                nn.init.kaiming_normal_(fc.weight, nonlinearity="relu")
                nn.init.constant_(fc.bias, -4.0 if bug else 0.0)

        def forward(self, x):
            return self.fc3(self.relu2(self.fc2(self.relu1(self.fc1(x)))))

    model = SparseMLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = DataLoader(TensorDataset(X_tr, y_tr), batch_size=32, shuffle=True)
    with watch(model, optimizer):
        for _ in range(3):
            for xb, yb in loader:
                optimizer.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                optimizer.step()
    return _accuracy(model, X_te, y_te)


@bug(
    "dead_activation",
    "exploding",
    where=("hidden",),
    note="warm-up written wrong: the first 20 steps run at 100x the base lr; the weights blow "
    "up and almost every ReLU in `hidden` dies",
)
def classic_lr_spike_kills_relu(watch, bug=True):
    X_tr, y_tr, X_te, y_te = _digits()
    model = nn.Sequential()
    model.add_module(
        "hidden", nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU())
    )
    model.add_module("out", nn.Linear(128, 10))
    base_lr = 0.05
    optimizer = torch.optim.SGD(model.parameters(), lr=base_lr, momentum=0.9)
    warmup = 20

    def lr_at(step):
        if step >= warmup:
            return base_lr
        return base_lr * (100.0 if bug else (step + 1) / warmup)  # meant: ramp up to base_lr

    loader = DataLoader(TensorDataset(X_tr, y_tr), batch_size=32, shuffle=True)
    step = 0
    with watch(model, optimizer):
        for _ in range(3):
            for xb, yb in loader:
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step)
                optimizer.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                optimizer.step()
                step += 1
    return _accuracy(model, X_te, y_te)


# -- eval mode left on ----------------------------------------------------------------------------


@bug(
    "eval_mode",
    note="model.train() is called once before the epochs; validate() switches to eval and "
    "every later epoch trains with dropout off and BatchNorm frozen (on this small task the "
    "accuracy barely shows it)",
)
def classic_eval_left_on_after_validation(watch, bug=True):
    X_tr, y_tr, X_te, y_te = _digits()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(64, 256)
            self.bn1 = nn.BatchNorm1d(256)
            self.drop = nn.Dropout(0.5)
            self.fc2 = nn.Linear(256, 10)

        def forward(self, x):
            return self.fc2(self.drop(F.relu(self.bn1(self.fc1(x)))))

    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(X_tr, y_tr), batch_size=64, shuffle=True)

    def train_one_epoch():
        if not bug:
            model.train()
        for xb, yb in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            optimizer.step()

    def validate():
        model.eval()
        with torch.no_grad():
            return F.cross_entropy(model(X_te), y_te).item()

    history = []
    with watch(model, optimizer):
        model.train()
        for _ in range(5):
            train_one_epoch()
            history.append(validate())
    return _accuracy(model, X_te, y_te)


# -- frozen parameters that still move ------------------------------------------------------------


@bug(
    "frozen_but_updated",
    where=("features",),
    note="transfer: froze the pretrained backbone but kept its optimizer (momentum, weight "
    "decay) and zero_grad(set_to_none=False): the 'frozen' weights keep drifting",
)
def classic_frozen_backbone_still_moves(watch, bug=True):
    X_tr, y_tr, X_te, y_te = _digits()

    class Net(nn.Module):
        def __init__(self, n_out):
            super().__init__()
            self.features = nn.Sequential(
                nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU()
            )
            self.head = nn.Linear(64, n_out)

        def forward(self, x):
            return self.head(self.features(x))

    # stage 1: pretrain on "is it a 0-4 digit?"
    model = Net(2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3)
    loader = DataLoader(TensorDataset(X_tr, y_tr), batch_size=32, shuffle=True)
    for xb, yb in loader:
        optimizer.zero_grad(set_to_none=False)
        F.cross_entropy(model(xb), (yb >= 5).long()).backward()
        optimizer.step()

    # stage 2: freeze the backbone, new 10-way head
    for p in model.features.parameters():
        p.requires_grad = False
    model.head = nn.Linear(64, 10)
    if bug:
        optimizer.add_param_group({"params": model.head.parameters()})
    else:
        optimizer = torch.optim.SGD(
            model.head.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3
        )
    with watch(model, optimizer):
        for _ in range(3):
            for xb, yb in loader:
                optimizer.zero_grad(set_to_none=False)
                F.cross_entropy(model(xb), yb).backward()
                optimizer.step()
    return _accuracy(model, X_te, y_te)


@bug(
    "frozen_but_updated",
    where=("encoder",),
    note="froze the encoder mid-training with requires_grad=False, AdamW still holds it and "
    "model.zero_grad(set_to_none=False) leaves zero grads: Adam's moments move it",
)
def classic_adamw_frozen_encoder(watch, bug=True):
    X_tr, y_tr, X_te, y_te = _digits()
    model = nn.ModuleDict(
        {
            "encoder": nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 32), nn.Tanh()),
            "head": nn.Linear(32, 10),
        }
    )

    def forward(x):
        return model["head"](model["encoder"](x))

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    loader = DataLoader(TensorDataset(X_tr, y_tr), batch_size=32, shuffle=True)
    freeze_at = 1
    with watch(model, optimizer):
        for epoch in range(3):
            if epoch == freeze_at:  # encoder is good enough: only tune the head now
                for p in model["encoder"].parameters():
                    p.requires_grad_(False)
                    if not bug:
                        p.grad = None
            for xb, yb in loader:
                model.zero_grad(set_to_none=False)
                F.cross_entropy(forward(xb), yb).backward()
                optimizer.step()
    with torch.no_grad():
        return (forward(X_te).argmax(1) == y_te).float().mean().item()


# -- forgotten zero_grad --------------------------------------------------------------------------


@bug(
    "grad_accumulation",
    note="Trainer.training_step never calls optimizer.zero_grad(): gradients pile up",
)
def classic_forgot_zero_grad(watch, bug=True):
    X_tr, y_tr, X_te, y_te = _digits()

    class Trainer:
        def __init__(self, model):
            self.model = model
            self.optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

        def training_step(self, batch):
            xb, yb = batch
            if not bug:
                self.optimizer.zero_grad()
            loss = F.cross_entropy(self.model(xb), yb)
            loss.backward()
            self.optimizer.step()
            return loss.item()

        def fit(self, loader, epochs):
            for _ in range(epochs):
                self.model.train()
                losses = [self.training_step(b) for b in loader]
            return sum(losses) / len(losses)

    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    trainer = Trainer(model)
    loader = DataLoader(TensorDataset(X_tr, y_tr), batch_size=32, shuffle=True)
    with watch(model, trainer.optimizer):
        trainer.fit(loader, epochs=3)
    return _accuracy(model, X_te, y_te)


# -- BatchNorm with a last batch of one -----------------------------------------------------------


@bug(
    "batchnorm_batch_of_one",
    where=("bn",),
    note="1153 training images, batch_size=32, drop_last=False: the last batch has one image. "
    "The accuracy barely shows it; the running statistics take one skewed update per epoch",
)
def classic_bn_last_batch_of_one(watch, bug=True):
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    y = torch.tensor(y)
    X_tr, y_tr, X_te, y_te = X[:1153], y[:1153], X[1153:], y[1153:]

    model = nn.Sequential()
    model.add_module("conv1", nn.Conv2d(1, 16, 3, padding=1))
    model.add_module("bn1", nn.BatchNorm2d(16))
    model.add_module("relu1", nn.ReLU())
    model.add_module("conv2", nn.Conv2d(16, 16, 3, padding=1))
    model.add_module("bn2", nn.BatchNorm2d(16))
    model.add_module("relu2", nn.ReLU())
    model.add_module("pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("flat", nn.Flatten())
    model.add_module("fc", nn.Linear(16, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = DataLoader(TensorDataset(X_tr, y_tr), batch_size=32, shuffle=True, drop_last=not bug)
    with watch(model, optimizer):
        for _ in range(2):
            model.train()
            for xb, yb in loader:
                optimizer.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                optimizer.step()
    return _accuracy(model, X_te, y_te)


@bug(
    "batchnorm_batch_of_one",
    where=("norm",),
    note="sensor windows through Conv1d+BatchNorm1d; 449 windows at batch 64 leave a last "
    "batch of one window",
)
def classic_bn1d_sequence_batch_of_one(watch, bug=True):
    n, t = 449, 24
    x = torch.randn(n + 200, 2, t)
    y = (x[:, 0, :12].mean(1) > x[:, 1, 12:].mean(1)).long()

    class SensorNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(2, 16, 5, padding=2)
            self.norm = nn.BatchNorm1d(16)
            self.head = nn.Linear(16 * t, 2)

        def forward(self, x):
            return self.head(F.relu(self.norm(self.conv(x))).flatten(1))

    model = SensorNet()
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(x[:n], y[:n]), batch_size=64, shuffle=True, drop_last=not bug)
    with watch(model, optimizer):
        for _ in range(6):
            model.train()
            for xb, yb in loader:
                optimizer.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                optimizer.step()
    return _accuracy(model, x[n:], y[n:])


@bug(
    "zero_grad",
    where="optimizer",
    note="a logging helper reads the gradient norm after backward() and then clears the "
    "gradients (model.zero_grad(), set_to_none by default) before optimizer.step()",
)
def classic_grad_logger_clears_before_step(watch, bug=True):
    X_tr, y_tr, X_te, y_te = _digits()
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    norms = []

    def log_gradients(net):
        total = torch.sqrt(sum(p.grad.pow(2).sum() for p in net.parameters()))
        norms.append(total.item())
        if bug:
            net.zero_grad()  # "reset for the next batch"

    loader = DataLoader(TensorDataset(X_tr, y_tr), batch_size=64, shuffle=True)
    with watch(model, optimizer):
        for _ in range(3):
            for xb, yb in loader:
                if not bug:
                    optimizer.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                log_gradients(model)
                optimizer.step()
    return _accuracy(model, X_te, y_te)


@bug(
    "zero_grad",
    where="optimizer",
    note="an autoencoder loop that calls optimizer.zero_grad() after backward(), meaning to "
    "clear before the next batch, then steps: step() finds no gradients",
)
def classic_zero_grad_after_backward_autoencoder(watch, bug=True):
    X = torch.tensor(load_digits().data / 16.0, dtype=torch.float32)
    model = nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 64), nn.Sigmoid())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    loader = DataLoader(TensorDataset(X[:1400]), batch_size=32, shuffle=True)
    with watch(model, optimizer):
        for _ in range(4):
            for (xb,) in loader:
                loss = F.binary_cross_entropy(model(xb), xb)
                if not bug:
                    optimizer.zero_grad()
                loss.backward()
                if bug:
                    optimizer.zero_grad()
                optimizer.step()
    with torch.no_grad():
        return F.binary_cross_entropy(model(X[1400:]), X[1400:]).item()
