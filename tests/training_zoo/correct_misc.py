"""Correct tabular and miscellaneous training scripts: LBFGS, plateau schedules, distillation.

Each is shaped like a common bug (sigmoid into a loss, an unregistered teacher, a layer left out
of the optimizer, a (N, 1) regression target, a tanh output, tied weights, weight decay) but is
correct code, so the monitor must raise no error or warning on any of them.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris, load_wine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.training_zoo.harness import correct


def _standardised(loader, test_fraction: float = 0.25):
    """(x_train, y_train, x_test, y_test) from a scikit-learn loader, features standardised."""
    data = loader()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target)
    perm = torch.randperm(len(x))
    x, y = x[perm], y[perm]
    cut = int(len(x) * (1 - test_fraction))
    mean, std = x[:cut].mean(0), x[:cut].std(0) + 1e-6
    x = (x - mean) / std
    return x[:cut], y[:cut], x[cut:], y[cut:]


@correct
def misc_lbfgs_closure_logistic(watch):
    """LBFGS with a closure (several forward/backward passes per step) on breast_cancer."""
    x, y, xt, yt = _standardised(load_breast_cancer)
    y, yt = y.float().unsqueeze(1), yt.float().unsqueeze(1)
    model = nn.Sequential(nn.Linear(30, 8), nn.Tanh(), nn.Linear(8, 1))
    criterion = nn.BCEWithLogitsLoss()
    optimizer = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=10, history_size=10)

    def closure():
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        return loss

    with watch(model, optimizer):
        for _ in range(5):
            optimizer.step(closure)
    with torch.no_grad():
        return ((model(xt) > 0).float() == yt).float().mean().item()


@correct
def misc_reduce_on_plateau_diabetes(watch):
    """RMSprop regression on diabetes, ReduceLROnPlateau on validation loss; output squeezed to (N,)."""
    x, y, xt, yt = _standardised(load_diabetes)
    y_mean, y_std = y.float().mean(), y.float().std()
    y, yt = (y.float() - y_mean) / y_std, (yt.float() - y_mean) / y_std
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))
    optimizer = torch.optim.RMSprop(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=2)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    criterion = nn.MSELoss()
    with watch(model, optimizer):
        for _epoch in range(15):
            model.train()
            for xb, yb in loader:
                optimizer.zero_grad()
                pred = model(xb).squeeze(-1)  # (N,) vs (N,)
                criterion(pred, yb).backward()
                optimizer.step()
            model.eval()
            with torch.no_grad():
                val_loss = criterion(model(xt).squeeze(-1), yt).item()
            scheduler.step(val_loss)
    return val_loss  # the variance of yt is ~1: predicting the mean scores ~1


@correct
def misc_regression_target_view_n1(watch):
    """Synthetic regression: the (N,) target is reshaped to (N, 1) to match the (N, 1) output."""
    x = torch.randn(512, 8)
    w = torch.randn(8)
    y = x @ w + 0.5 * torch.sin(3 * x[:, 0]) + 0.1 * torch.randn(512)
    dataset = TensorDataset(x[:400], y[:400])
    xt, yt = x[400:], y[400:]
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.MSELoss()

    def train_one_epoch(loader):
        model.train()
        for inputs, targets in loader:
            targets = targets.view(-1, 1)  # (N,) -> (N, 1)
            loss = loss_fn(model(inputs), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    with watch(model, optimizer):
        for _epoch in range(10):
            train_one_epoch(DataLoader(dataset, batch_size=32, shuffle=True))
    with torch.no_grad():
        return (loss_fn(model(xt), yt.unsqueeze(1)) / yt.var()).item()  # 1.0 = mean predictor


@correct
def misc_sigmoid_bceloss(watch):
    """Sigmoid output layer paired with nn.BCELoss (probabilities into a probability loss)."""
    x, y, xt, yt = _standardised(load_breast_cancer)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(30, 16)
            self.fc2 = nn.Linear(16, 1)
            self.sigmoid = nn.Sigmoid()

        def forward(self, x):
            return self.sigmoid(self.fc2(F.relu(self.fc1(x))))

    model = Net()
    criterion = nn.BCELoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loader = DataLoader(TensorDataset(x, y.float()), batch_size=32, shuffle=True)
    with watch(model, optimizer):
        for _epoch in range(5):
            for xb, yb in loader:
                optimizer.zero_grad()
                probs = model(xb)
                loss = criterion(probs, yb.unsqueeze(1))
                loss.backward()
                optimizer.step()
    with torch.no_grad():
        return ((model(xt).squeeze(1) > 0.5).long() == yt).float().mean().item()


@correct
def misc_tanh_output_pm1_targets(watch):
    """A tanh output layer for targets in [-1, 1] (a normalised sine of the inputs), Adagrad."""
    x = torch.rand(600, 2) * 4 - 2
    y = torch.sin(1.5 * x[:, :1]) * torch.cos(x[:, 1:])  # in [-1, 1], shape (N, 1)
    model = nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 1), nn.Tanh())
    optimizer = torch.optim.Adagrad(model.parameters(), lr=0.05)
    loader = DataLoader(TensorDataset(x[:480], y[:480]), batch_size=32, shuffle=True)
    with watch(model, optimizer):
        for _epoch in range(10):
            for xb, yb in loader:
                optimizer.zero_grad()
                F.mse_loss(model(xb), yb).backward()
                optimizer.step()
    xt, yt = x[480:], y[480:]
    with torch.no_grad():
        return (F.mse_loss(model(xt), yt) / yt.var()).item()  # 1.0 = mean predictor


def _train_teacher(x, y, classes):
    teacher = nn.Sequential(nn.Linear(x.shape[1], 64), nn.ReLU(), nn.Linear(64, classes))
    opt = torch.optim.Adam(teacher.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(teacher(x), y).backward()
        opt.step()
    return teacher


@correct
def misc_distill_hidden_teacher_setattr(watch):
    """Distillation: the frozen teacher is hidden with object.__setattr__ (kept out of state_dict)."""
    x, y, xt, yt = _standardised(load_wine)
    teacher = _train_teacher(x, y, 3)

    class Distiller(nn.Module):
        def __init__(self, student, teacher, temperature=2.0, alpha=0.5):
            super().__init__()
            self.student = student
            # not a submodule on purpose: checkpoints hold only the student
            object.__setattr__(self, "teacher", teacher)
            self.teacher.requires_grad_(False)
            self.teacher.eval()
            self.temperature = temperature
            self.alpha = alpha

        def forward(self, x, y):
            logits = self.student(x)
            with torch.no_grad():
                soft = F.softmax(self.teacher(x) / self.temperature, dim=-1)
            kd = F.kl_div(
                F.log_softmax(logits / self.temperature, dim=-1), soft, reduction="batchmean"
            ) * (self.temperature**2)
            return self.alpha * kd + (1 - self.alpha) * F.cross_entropy(logits, y)

    student = nn.Sequential(nn.Linear(13, 8), nn.ReLU(), nn.Linear(8, 3))
    model = Distiller(student, teacher)
    optimizer = torch.optim.Adam(model.student.parameters(), lr=1e-2)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    with watch(model, optimizer):
        for _epoch in range(6):
            for xb, yb in loader:
                optimizer.zero_grad()
                model(xb, yb).backward()
                optimizer.step()
    with torch.no_grad():
        return (student(xt).argmax(1) == yt).float().mean().item()


@correct
def misc_distill_teacher_list_frozen_stem(watch):
    """Teacher kept in a list attribute; the student's pretrained stem is frozen via frozen=."""
    x, y, xt, yt = _standardised(load_iris, test_fraction=0.3)
    teacher = _train_teacher(x, y, 3)

    class Student(nn.Module):
        def __init__(self, teacher):
            super().__init__()
            self.stem = nn.Linear(4, 64)
            self.stem.load_state_dict(teacher[0].state_dict())  # start from the teacher's layer
            self.head = nn.Sequential(nn.ReLU(), nn.Linear(64, 3))
            self._teacher = [teacher]  # a list, so the teacher is not a submodule

        def forward(self, x):
            return self.head(self.stem(x))

        def distill_loss(self, x, y, t=3.0):
            logits = self(x)
            with torch.no_grad():
                target = F.softmax(self._teacher[0](x) / t, dim=1)
            kd = F.kl_div(F.log_softmax(logits / t, dim=1), target, reduction="batchmean")
            return kd * t * t + F.cross_entropy(logits, y)

    model = Student(teacher)
    # only the head is optimised; the stem stays as it is (its gradient is simply unused)
    optimizer = torch.optim.Adam(model.head.parameters(), lr=2e-2)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    with watch(model, optimizer, frozen=["stem"]):
        for _epoch in range(8):
            for xb, yb in loader:
                optimizer.zero_grad()
                model.distill_loss(xb, yb).backward()
                optimizer.step()
    with torch.no_grad():
        return (model(xt).argmax(1) == yt).float().mean().item()


@correct
def misc_tied_autoencoder(watch):
    """Tied-weight autoencoder: the decoder reuses the encoder's weight transposed."""
    x, _, xt, _ = _standardised(load_wine)

    class TiedAutoEncoder(nn.Module):
        def __init__(self, dim, code):
            super().__init__()
            self.encoder = nn.Linear(dim, code)
            self.decoder_bias = nn.Parameter(torch.zeros(dim))

        def forward(self, x):
            h = torch.tanh(self.encoder(x))
            return F.linear(h, self.encoder.weight.t(), self.decoder_bias)

    model = TiedAutoEncoder(13, 4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loader = DataLoader(TensorDataset(x), batch_size=16, shuffle=True)
    with watch(model, optimizer):
        for _epoch in range(15):
            for (xb,) in loader:
                optimizer.zero_grad()
                F.mse_loss(model(xb), xb).backward()
                optimizer.step()
    with torch.no_grad():
        return (F.mse_loss(model(xt), xt) / xt.var(0).mean()).item()  # 1.0 = mean predictor


@correct
def misc_multitask_two_heads(watch):
    """Shared trunk, two heads: species (cross-entropy) and petal width (MSE), summed losses."""
    data = load_iris()
    features = torch.tensor(data.data[:, :3], dtype=torch.float32)  # petal width is a target
    width = torch.tensor(data.data[:, 3], dtype=torch.float32)
    species = torch.tensor(data.target)
    features = (features - features.mean(0)) / features.std(0)
    width = (width - width.mean()) / width.std()
    perm = torch.randperm(150)
    train_idx, test_idx = perm[:110], perm[110:]

    class MultiTask(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = nn.Sequential(nn.Linear(3, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
            self.cls_head = nn.Linear(32, 3)
            self.reg_head = nn.Linear(32, 1)

        def forward(self, x):
            h = self.trunk(x)
            return self.cls_head(h), self.reg_head(h).squeeze(-1)

    model = MultiTask()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
    loader = DataLoader(
        TensorDataset(features[train_idx], species[train_idx], width[train_idx]),
        batch_size=16,
        shuffle=True,
    )
    with watch(model, optimizer):
        for _epoch in range(10):
            for xb, cls_b, reg_b in loader:
                logits, reg = model(xb)
                loss = F.cross_entropy(logits, cls_b) + 0.5 * F.mse_loss(reg, reg_b)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    with torch.no_grad():
        logits, reg = model(features[test_idx])
        acc = (logits.argmax(1) == species[test_idx]).float().mean().item()
        rel_mse = F.mse_loss(reg, width[test_idx]).item()  # width is standardised: 1.0 = mean
    return acc - rel_mse


@correct
def misc_sgd_weight_decay_wine(watch):
    """SGD momentum with the usual coupled weight_decay=5e-4 and a long-ish run on wine."""
    x, y, xt, yt = _standardised(load_wine)
    model = nn.Sequential(nn.Linear(13, 32), nn.ReLU(), nn.Linear(32, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    with watch(model, optimizer):
        for _epoch in range(12):
            for xb, yb in loader:
                optimizer.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                optimizer.step()
    with torch.no_grad():
        return (model(xt).argmax(1) == yt).float().mean().item()


@correct
def misc_cosine_annealing_to_zero_per_batch(watch):
    """CosineAnnealingLR(T_max = all batches) stepped per batch: lr reaches ~0 at the end by design."""
    x, y, xt, yt = _standardised(load_wine)
    model = nn.Sequential(nn.Linear(13, 32), nn.ReLU(), nn.Linear(32, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    epochs = 8
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(loader))
    with watch(model, optimizer):
        for _epoch in range(epochs):
            for xb, yb in loader:
                optimizer.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                optimizer.step()
                scheduler.step()
    with torch.no_grad():
        return (model(xt).argmax(1) == yt).float().mean().item()


@correct
def misc_multilabel_bce_pos_weight(watch):
    """Multi-label: (N, C) logits vs (N, C) float targets, BCEWithLogitsLoss with a (C,) pos_weight."""
    n, d, c = 600, 20, 5
    x = torch.randn(n, d)
    w = torch.randn(d, c)
    bias = torch.tensor([-2.0, -1.0, 0.0, -1.5, -0.5])  # rare and common labels
    y = ((x @ w) / d**0.5 * 3 + bias > 0).float()
    pos = y[:480].mean(0).clamp(min=0.05)
    criterion = nn.BCEWithLogitsLoss(pos_weight=(1 - pos) / pos)  # broadcasts over N: intended
    model = nn.Sequential(nn.Linear(d, 64), nn.ReLU(), nn.Linear(64, c))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = DataLoader(TensorDataset(x[:480], y[:480]), batch_size=32, shuffle=True)
    with watch(model, optimizer):
        for _epoch in range(6):
            for xb, yb in loader:
                optimizer.zero_grad()
                criterion(model(xb), yb).backward()
                optimizer.step()
    with torch.no_grad():
        pred = model(x[480:]) > 0
        return (pred == y[480:].bool()).float().mean().item()  # per-label accuracy


@correct
def misc_two_losses_two_backwards(watch):
    """Supervised CE and a noise-consistency loss, each .backward() on its own, then one step."""
    x, y, xt, yt = _standardised(load_breast_cancer)
    model = nn.Sequential(nn.Linear(30, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    with watch(model, optimizer):
        for _epoch in range(5):
            model.train()
            for xb, yb in loader:
                optimizer.zero_grad()
                logits = model(xb)
                F.cross_entropy(logits, yb).backward()
                # consistency: predictions should not move under small input noise
                with torch.no_grad():
                    target = F.softmax(model(xb), dim=1)
                noisy = F.log_softmax(model(xb + 0.1 * torch.randn_like(xb)), dim=1)
                (0.5 * F.kl_div(noisy, target, reduction="batchmean")).backward()
                optimizer.step()
    model.eval()
    with torch.no_grad():
        return (model(xt).argmax(1) == yt).float().mean().item()


@correct
def misc_modulelist_sigmoid_mlp(watch):
    """Hidden layers built in a loop into an nn.ModuleList; sigmoid units on standardised inputs."""
    x, y, xt, yt = _standardised(load_breast_cancer)

    class MLP(nn.Module):
        def __init__(self, sizes):
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))

        def forward(self, x):
            for layer in self.layers[:-1]:
                x = torch.sigmoid(layer(x))
            return self.layers[-1](x)

    model = MLP([30, 32, 16, 2])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    with watch(model, optimizer):
        for _epoch in range(6):
            for xb, yb in loader:
                optimizer.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                optimizer.step()
    with torch.no_grad():
        return (model(xt).argmax(1) == yt).float().mean().item()


@correct
def misc_confident_finetune_handwritten_bce(watch):
    """A classifier trained to confidence, then trained on with Adam through a hand-written
    binary cross-entropy (sigmoid, clamp, log): the loss's sigmoid sits at 0 and 1 because
    the model is sure, not because a hidden layer is saturated."""
    x, y, xt, yt = _standardised(load_breast_cancer)
    y = y.float()
    model = nn.Sequential(nn.Linear(30, 64), nn.ReLU(), nn.Linear(64, 1))

    def bce(logits, target):
        p = torch.sigmoid(logits.squeeze(1)).clamp(1e-7, 1 - 1e-7)
        return -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()

    warmup = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):  # the pretrained checkpoint, full batch
        warmup.zero_grad()
        bce(model(x), y).backward()
        warmup.step()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
    with watch(model, optimizer):
        for _epoch in range(4):
            for xb, yb in loader:
                optimizer.zero_grad()
                bce(model(xb), yb).backward()
                optimizer.step()
    with torch.no_grad():
        return ((model(xt).squeeze(1) > 0).long() == yt).float().mean().item()


@correct
def misc_validation_loss_without_no_grad(watch):
    """A trainer that logs a validation loss every 8 steps in eval mode but without
    torch.no_grad (the graph is built and dropped), then goes back to model.train(): every
    training step runs in train mode."""
    x, y, xt, yt = _standardised(load_wine)

    class Trainer:
        def __init__(self):
            self.model = nn.Sequential(
                nn.Linear(13, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 3)
            )
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)
            self.history = []

        def validate(self):
            self.model.eval()
            self.history.append(F.cross_entropy(self.model(xt), yt).item())
            self.model.train()

        def fit(self, loader, epochs):
            step = 0
            for _ in range(epochs):
                for xb, yb in loader:
                    self.optimizer.zero_grad()
                    F.cross_entropy(self.model(xb), yb).backward()
                    self.optimizer.step()
                    step += 1
                    if step % 8 == 0:
                        self.validate()

    trainer = Trainer()
    trainer.model.train()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, drop_last=True)
    with watch(trainer.model, trainer.optimizer):
        trainer.fit(loader, epochs=6)
    return trainer.history[-1]


@correct
def misc_log_softmax_module_implicit_dim_2d(watch):
    """nn.LogSoftmax() with no dim on (N, C) scores, then nll_loss: for 2-D input PyTorch's
    implicit dim is 1, the classes (deprecated, and right)."""
    x, y, xt, yt = _standardised(load_iris)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3), nn.LogSoftmax())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    with watch(model, optimizer):
        for _epoch in range(15):
            for xb, yb in loader:
                optimizer.zero_grad()
                F.nll_loss(model(xb), yb).backward()
                optimizer.step()
    with torch.no_grad():
        return (model(xt).argmax(1) == yt).float().mean().item()


@correct
def misc_nearest_class_mean_with_inf_mask(watch):
    """Episodes of a nearest-class-mean classifier: each samples 3 of the wine classes' 3, or
    2 of them, and the distance to a class absent from the episode is set to +inf (never the
    nearest); the logits are minus the distances, so absent classes get -inf and no gradient."""
    x, y, xt, yt = _standardised(load_wine)

    class Distances(nn.Module):
        def forward(self, queries, means, present):
            d = torch.cdist(queries, means).pow(2)
            return torch.where(present, d, torch.full_like(d, float("inf")))

    class Episodic(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Sequential(nn.Linear(13, 32), nn.ReLU(), nn.Linear(32, 8))
            self.distances = Distances()

        def forward(self, queries, support, support_y, present):
            z = self.embed(support)
            means = torch.stack(
                [z[support_y == c].mean(0) if present[c] else z.new_zeros(8) for c in range(3)]
            )
            return -self.distances(self.embed(queries), means, present)

    model = Episodic()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    with watch(model, optimizer):
        for _ in range(120):
            present = torch.ones(3, dtype=torch.bool)
            if torch.rand((), generator=g) < 0.5:
                present[torch.randint(0, 3, (), generator=g)] = False
            pool = torch.nonzero(present[y]).squeeze(1)
            pick = pool[torch.randperm(len(pool), generator=g)[:40]]
            support, query = pick[:20], pick[20:]
            optimizer.zero_grad()
            logits = model(x[query], x[support], y[support], present)
            F.cross_entropy(logits, y[query]).backward()
            optimizer.step()
    with torch.no_grad():
        every = torch.ones(3, dtype=torch.bool)
        return (model(xt, x, y, every).argmax(1) == yt).float().mean().item()
