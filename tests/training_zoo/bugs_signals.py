"""Zoo: bugs whose only trace is in the training signals.

Saturated tanh/sigmoid units fed unnormalised inputs, constant (symmetric) initialisation, data
whose labels cannot be learned from its inputs, and sequence models that mix the samples of a
batch. Each bug comes with its fixed twin (``bug=False``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_wine
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch.utils.data import DataLoader, TensorDataset

from tests.training_zoo.harness import bug


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def _digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    return X[:1200], y[:1200], X[1200:], y[1200:]


# -- 5. saturated tanh/sigmoid units --------------------------------------------------------------


@bug(
    "saturated_activation",
    where=("act1", "act2"),
    note="raw 0-255 pixels into a tanh MLP: forgot to divide by 255",
)
def sat_digits_raw_pixels(watch, bug=True):
    digits = load_digits()
    pixels = digits.images.reshape(len(digits.images), -1) * 16.0  # back to 0-255 grey levels
    if not bug:
        pixels = pixels / 255.0
    X = torch.tensor(pixels, dtype=torch.float32)
    y = torch.tensor(digits.target)
    train_loader = DataLoader(TensorDataset(X[:1200], y[:1200]), batch_size=64, shuffle=True)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.act1 = nn.Linear(64, 128), nn.Tanh()
            self.fc2, self.act2 = nn.Linear(128, 64), nn.Tanh()
            self.fc3 = nn.Linear(64, 10)

        def forward(self, x):
            return self.fc3(self.act2(self.fc2(self.act1(self.fc1(x)))))

    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def train(epoch):
        model.train()
        for data, target in train_loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(data), target)
            loss.backward()
            optimizer.step()

    with watch(model, optimizer):
        for epoch in range(1, 5):
            train(epoch)
    return _accuracy(model, X[1200:], y[1200:])


@bug(
    "saturated_activation",
    where=("1", "3"),
    note="raw wine features (proline ~1000) into a sigmoid MLP; no StandardScaler",
)
def sat_wine_unscaled_sigmoid(watch, bug=True):
    X, y = load_wine(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)
    if not bug:
        scaler = StandardScaler().fit(X_tr)
        X_tr, X_te = scaler.transform(X_tr), scaler.transform(X_te)
    X_tr, X_te = (torch.tensor(a, dtype=torch.float32) for a in (X_tr, X_te))
    y_tr, y_te = torch.tensor(y_tr), torch.tensor(y_te)

    class Trainer:
        def __init__(self, model, lr=0.01):
            self.model = model
            self.opt = torch.optim.Adam(model.parameters(), lr=lr)
            self.loss_fn = nn.CrossEntropyLoss()

        def fit(self, loader, epochs):
            for _ in range(epochs):
                self.model.train()
                for xb, yb in loader:
                    self.opt.zero_grad()
                    loss = self.loss_fn(self.model(xb), yb)
                    loss.backward()
                    self.opt.step()

    model = nn.Sequential(
        nn.Linear(13, 32), nn.Sigmoid(), nn.Linear(32, 16), nn.Sigmoid(), nn.Linear(16, 3)
    )
    trainer = Trainer(model)
    loader = DataLoader(TensorDataset(X_tr, y_tr), batch_size=16, shuffle=True)
    with watch(model, trainer.opt):
        trainer.fit(loader, epochs=15)
    return _accuracy(model, X_te, y_te)


@bug(
    "saturated_activation",
    note="breast-cancer features (areas in the thousands) fed raw into torch.tanh units",
)
def sat_cancer_functional_tanh(watch, bug=True):
    data = load_breast_cancer()
    X, y = data.data, data.target.astype(np.float32)
    if not bug:
        X = (X - X.mean(0)) / X.std(0)
    X = torch.tensor(X, dtype=torch.float32)
    y = torch.tensor(y)
    X_tr, X_te, y_tr, y_te = X[:420], X[420:], y[:420], y[420:]

    class Classifier(nn.Module):
        def __init__(self, n_features, hidden=32):
            super().__init__()
            self.hidden = nn.Linear(n_features, hidden)
            self.hidden2 = nn.Linear(hidden, hidden)
            self.head = nn.Linear(hidden, 1)

        def forward(self, x):
            h = torch.tanh(self.hidden(x))
            h = torch.tanh(self.hidden2(h))
            return self.head(h).squeeze(-1)

    model = Classifier(X.shape[1])
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    criterion = nn.BCEWithLogitsLoss()
    loader = DataLoader(TensorDataset(X_tr, y_tr), batch_size=32, shuffle=True)
    with watch(model, optimizer):
        for _ in range(10):
            for xb, yb in loader:
                optimizer.zero_grad()
                criterion(model(xb), yb).backward()
                optimizer.step()
    with torch.no_grad():
        return ((model(X_te) > 0).float() == y_te).float().mean().item()


@bug(
    "saturated_activation",
    where="<loop>:tanh",
    note="a model the loop writes out itself (layers in a ModuleDict, tanh between them in "
    "the step function), fed raw breast-cancer features",
)
def sat_loop_written_model(watch, bug=True):
    X, y = load_breast_cancer(return_X_y=True)
    if not bug:
        X = StandardScaler().fit_transform(X)
    X_tr, X_te, y_tr, y_te = (
        torch.tensor(a, dtype=torch.float32)
        for a in train_test_split(X, y, test_size=0.25, random_state=0)
    )
    layers = nn.ModuleDict({"encode": nn.Linear(30, 32), "classify": nn.Linear(32, 1)})

    def logits(xb):
        return layers["classify"](torch.tanh(layers["encode"](xb))).squeeze(1)

    optimizer = torch.optim.Adam(layers.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(X_tr, y_tr), batch_size=32, shuffle=True)
    with watch(layers, optimizer):
        for _ in range(8):
            for xb, yb in loader:
                optimizer.zero_grad()
                F.binary_cross_entropy_with_logits(logits(xb), yb).backward()
                optimizer.step()
    with torch.no_grad():
        return ((logits(X_te) > 0).float() == y_te).float().mean().item()


@bug(
    "saturated_activation",
    where=("1", "3", "5", "7"),
    note="xavier init with gain=6 'to fight vanishing gradients' pins every tanh at +-1",
)
def sat_large_init_gain(watch, bug=True):
    X_all = torch.randn(1024, 20)
    w = torch.randn(20)
    y_all = ((X_all @ w) + 0.5 * X_all[:, 0] * X_all[:, 1] > 0).long()
    layers = []
    for d_in, d_out in [(20, 64), (64, 64), (64, 64), (64, 64)]:
        layers += [nn.Linear(d_in, d_out), nn.Tanh()]
    model = nn.Sequential(*layers, nn.Linear(64, 2))
    gain = 6.0 if bug else nn.init.calculate_gain("tanh")
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight, gain=gain)
            nn.init.zeros_(m.bias)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loader = DataLoader(TensorDataset(X_all[:800], y_all[:800]), batch_size=32, shuffle=True)
    with watch(model, optimizer):
        for _ in range(5):
            for xb, yb in loader:
                optimizer.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                optimizer.step()
    return _accuracy(model, X_all[800:], y_all[800:])


# -- 6. symmetric (constant) initialisation -------------------------------------------------------


@bug(
    "symmetric_weights",
    where=("fc1", "fc2"),
    note="model.apply(init_weights) with nn.init.constant_: every hidden unit is the same unit",
)
def sym_apply_constant_init(watch, bug=True):
    X_tr, y_tr, X_te, y_te = _digits_split()

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(64, 100)
            self.fc2 = nn.Linear(100, 50)
            self.out = nn.Linear(50, 10)

        def forward(self, x):
            return self.out(F.relu(self.fc2(F.relu(self.fc1(x)))))

    def init_weights(m):
        if isinstance(m, nn.Linear):
            if bug:
                nn.init.constant_(m.weight, 0.05)
            else:
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)

    model = MLP()
    model.apply(init_weights)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(X_tr, y_tr), batch_size=32, shuffle=True)
    with watch(model, optimizer):
        for _ in range(3):
            for xb, yb in loader:
                optimizer.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                optimizer.step()
    return _accuracy(model, X_te, y_te)


@bug(
    "symmetric_weights",
    where=("fc1", "fc2"),
    note="weight.data.fill_(0.01) in __init__ (a habit from logistic regression)",
)
def sym_fill_small_constant(watch, bug=True):
    X, y = load_wine(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    X, y = torch.tensor(X, dtype=torch.float32), torch.tensor(y)
    idx = torch.randperm(len(X))
    tr, te = idx[:130], idx[130:]

    class WineNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(13, 16)
            self.fc2 = nn.Linear(16, 16)
            self.fc3 = nn.Linear(16, 3)
            if bug:
                for layer in (self.fc1, self.fc2, self.fc3):
                    layer.weight.data.fill_(0.01)
                    layer.bias.data.zero_()

        def forward(self, x):
            return self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))

    model = WineNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = DataLoader(TensorDataset(X[tr], y[tr]), batch_size=16, shuffle=True)
    with watch(model, optimizer):
        for _ in range(20):
            for xb, yb in loader:
                optimizer.zero_grad()
                loss = F.cross_entropy(model(xb), yb)
                loss.backward()
                optimizer.step()
    return _accuracy(model, X[te], y[te])


@bug(
    "symmetric_weights",
    where=("conv1", "conv2", "fc1"),
    note="constant_ init of every conv filter: all channels compute the same feature map",
)
def sym_cnn_constant_filters(watch, bug=True):
    X_tr, y_tr, X_te, y_te = _digits_split()
    X_tr, X_te = X_tr.view(-1, 1, 8, 8), X_te.view(-1, 1, 8, 8)

    class SmallCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
            self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
            self.fc1 = nn.Linear(16 * 4 * 4, 32)
            self.fc2 = nn.Linear(32, 10)

        def forward(self, x):
            x = F.relu(self.conv1(x))
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            return self.fc2(F.relu(self.fc1(x.flatten(1))))

    model = SmallCNN()
    if bug:
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.constant_(m.weight, 0.1)
                nn.init.constant_(m.bias, 0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
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
    "symmetric_weights",
    where=("encoder",),
    note="autoencoder initialised with nn.init.constant_: the code has one distinct unit",
)
def sym_autoencoder_constant(watch, bug=True):
    X_tr, _, X_te, _ = _digits_split()
    model = nn.Sequential()
    model.add_module("encoder", nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8)))
    model.add_module("decoder", nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 64)))
    if bug:
        for name, p in model.named_parameters():
            nn.init.constant_(p, 0.1 if name.endswith("weight") else 0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loader = DataLoader(TensorDataset(X_tr), batch_size=100, shuffle=True)
    with watch(model, optimizer):
        for _ in range(6):
            for (xb,) in loader:
                optimizer.zero_grad()
                loss = F.mse_loss(model(xb), xb)
                loss.backward()
                optimizer.step()
    with torch.no_grad():
        return F.mse_loss(model(X_te), X_te).item()


# -- 7. data that cannot be learned ---------------------------------------------------------------


@bug("loss_at_chance", note="shuffled the training images with randperm but not their labels")
def chance_inputs_shuffled_alone(watch, bug=True):
    X_tr, y_tr, X_te, y_te = _digits_split()
    perm = torch.randperm(len(X_tr))
    X_tr = X_tr[perm]
    y_tr = y_tr if bug else y_tr[perm]
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(X_tr, y_tr), batch_size=32, shuffle=True)
    with watch(model, optimizer):
        for _ in range(3):
            for xb, yb in loader:
                optimizer.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                optimizer.step()
    return _accuracy(model, X_te, y_te)


@bug(
    "loss_at_chance",
    note="table is [features..., label, fold]; took table[:, -1] (the CV fold) as the label",
)
def chance_wrong_label_column(watch, bug=True):
    n, d = 900, 12
    feats = torch.randn(n, d)
    label = (feats[:, :3].sum(1) > 0).float() + (feats[:, 3] > 0.5).float()  # 3 classes
    fold = torch.randint(0, 3, (n,)).float()  # assigned for cross-validation
    table = torch.cat([feats, label[:, None], fold[:, None]], dim=1)

    class TableDataset(torch.utils.data.Dataset):
        def __init__(self, rows):
            self.rows = rows

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, i):
            row = self.rows[i]
            target = row[-1] if bug else row[-2]
            return row[:d], target.long()

    train_set, test_set = TableDataset(table[:700]), TableDataset(table[700:])
    model = nn.Sequential(nn.Linear(d, 64), nn.ReLU(), nn.Linear(64, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with watch(model, optimizer):
        for _ in range(5):
            for xb, yb in DataLoader(train_set, batch_size=50, shuffle=True):
                optimizer.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                optimizer.step()
    xs, ys = next(iter(DataLoader(test_set, batch_size=len(test_set))))
    return _accuracy(model, xs, ys)


@bug(
    "loss_at_chance",
    note="train_test_split called separately on X and y with different random_state",
)
def chance_split_mismatch(watch, bug=True):
    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    X_train, X_test = train_test_split(X, test_size=0.25, random_state=0)
    y_train, y_test = train_test_split(y, test_size=0.25, random_state=42 if bug else 0)
    X_train, X_test = (torch.tensor(a, dtype=torch.float32) for a in (X_train, X_test))
    y_train, y_test = (torch.tensor(a, dtype=torch.float32) for a in (y_train, y_test))
    model = nn.Sequential(nn.Linear(30, 32), nn.ReLU(), nn.Linear(32, 1))
    optimizer = torch.optim.Adagrad(model.parameters(), lr=0.05)
    loss_fn = nn.BCEWithLogitsLoss()

    def closure_for(xb, yb):
        def closure():
            optimizer.zero_grad()
            loss = loss_fn(model(xb).squeeze(1), yb)
            loss.backward()
            return loss

        return closure

    loader = DataLoader(TensorDataset(X_train, y_train), batch_size=32, shuffle=True)
    with watch(model, optimizer):
        for _ in range(10):
            for xb, yb in loader:
                optimizer.step(closure_for(xb, yb))
    with torch.no_grad():
        return ((model(X_test).squeeze(1) > 0).float() == y_test).float().mean().item()


@bug(
    "loss_at_chance",
    note="`targets = y; targets.sort()` for a quantile plot sorted y in place, detaching it "
    "from X: the regression loss stays at the target variance",
)
def chance_target_sorted_in_place(watch, bug=True):
    X, y = load_diabetes(return_X_y=True)
    y = (y - y.mean()) / y.std()
    if bug:
        targets = y
        targets.sort()  # ndarray.sort works in place
    else:
        targets = np.sort(y)
    _quantiles = targets[[len(targets) // 4, len(targets) // 2, 3 * len(targets) // 4]]
    X = torch.tensor(StandardScaler().fit_transform(X), dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.float32)
    idx = torch.randperm(len(X))
    tr, te = idx[:350], idx[350:]
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = DataLoader(TensorDataset(X[tr], y[tr]), batch_size=32, shuffle=True)
    with watch(model, optimizer):
        for _ in range(15):
            for xb, yb in loader:
                optimizer.zero_grad()
                F.mse_loss(model(xb).squeeze(1), yb).backward()
                optimizer.step()
    with torch.no_grad():
        return F.mse_loss(model(X[te]).squeeze(1), y[te]).item()


# -- 8. samples mixed across the batch ------------------------------------------------------------


def _sequences(n=640, t=16, f=4):
    """Sequences whose class is decided by the whole sequence, not its last step."""
    x = torch.randn(n, t, f)
    y = (x[:, :, 0].mean(1) > 0).long() + 2 * (x[:, :, 1].mean(1) > 0).long()
    return x, y


@bug(
    "batch_mixing",
    where=("lstm",),
    note="nn.LSTM without batch_first=True fed (batch, time, feat): batch becomes time",
)
def mix_lstm_without_batch_first(watch, bug=True):
    x, y = _sequences()

    class SeqClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(4, 32, batch_first=not bug)
            self.fc = nn.Linear(32, 4)

        def forward(self, x):  # x: (batch, time, feat)
            out, _ = self.lstm(x)
            return self.fc(out[:, -1, :])

    model = SeqClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    loader = DataLoader(TensorDataset(x[:512], y[:512]), batch_size=32, shuffle=True)
    with watch(model, optimizer):
        for _ in range(5):
            for xb, yb in loader:
                optimizer.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                optimizer.step()
    return _accuracy(model, x[512:], y[512:])


@bug(
    "batch_mixing",
    where=("gru",),
    note="nn.GRU(batch_first=False) fed (batch, time, feat), mean-pooled over dim 1",
)
def mix_gru_mean_pool(watch, bug=True):
    vocab, t = 10, 12
    tokens = torch.randint(1, vocab, (1600, t))
    y = ((tokens == 3).float().argmax(1) < (tokens == 5).float().argmax(1)).long()  # 3 before 5?
    keep = (tokens == 3).any(1) & (tokens == 5).any(1)
    tokens, y = tokens[keep][:640], y[keep][:640]

    class GRUTagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab, 16)
            self.gru = nn.GRU(16, 32) if bug else nn.GRU(16, 32, batch_first=True)
            self.head = nn.Linear(32, 2)

        def forward(self, tokens):
            out, _ = self.gru(self.embed(tokens))
            return self.head(out.mean(dim=1))

    model = GRUTagger()
    optimizer = torch.optim.RMSprop(model.parameters(), lr=3e-3)
    loader = DataLoader(TensorDataset(tokens[:512], y[:512]), batch_size=32, shuffle=True)
    with watch(model, optimizer):
        for _ in range(3):
            model.train()
            for xb, yb in loader:
                optimizer.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                optimizer.step()
    return _accuracy(model, tokens[512:], y[512:])


@bug(
    "batch_mixing",
    where=("encoder",),
    note="nn.TransformerEncoderLayer defaults to (seq, batch, d): fed (batch, seq, d) it "
    "attends across the batch",
)
def mix_transformer_without_batch_first(watch, bug=True):
    vocab, t, CLS = 8, 12, 8
    words = torch.randint(0, vocab, (512, t - 1))
    y = ((words == 1).sum(1) > (words == 2).sum(1)).long()
    tokens = torch.cat([torch.full((512, 1), CLS), words], dim=1)  # [CLS] w1 ... w11

    class TinyTransformer(nn.Module):
        def __init__(self, d=32):
            super().__init__()
            self.embed = nn.Embedding(vocab + 1, d)
            self.pos = nn.Parameter(torch.randn(1, t, d) * 0.1)
            layer = nn.TransformerEncoderLayer(
                d, nhead=4, dim_feedforward=64, dropout=0.0, batch_first=not bug
            )
            self.encoder = nn.TransformerEncoder(layer, num_layers=1)
            self.cls = nn.Linear(d, 2)

        def forward(self, tokens):
            h = self.encoder(self.embed(tokens) + self.pos)
            return self.cls(h[:, 0])  # the [CLS] position, BERT style

    model = TinyTransformer()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    loader = DataLoader(TensorDataset(tokens[:400], y[:400]), batch_size=32, shuffle=True)
    with watch(model, optimizer):
        for _ in range(5):
            for xb, yb in loader:
                optimizer.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                optimizer.step()
    return _accuracy(model, tokens[400:], y[400:])


@bug(
    "batch_mixing",
    note="x.view(B, C, T) instead of x.permute(0, 2, 1) before Conv1d scrambles time and channels",
)
def mix_conv1d_view_not_permute(watch, bug=True):
    n, t, c = 640, 32, 3
    x = torch.randn(n, t, c) * 0.5
    y = torch.randint(0, 3, (n,))
    bump = torch.exp(-0.5 * ((torch.arange(t) - 16.0) / 2.0) ** 2)
    x[torch.arange(n), :, y] += 2.0 * bump  # class k: a bump on channel k

    class TemporalCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv1d(c, 16, 5, padding=2)
            self.conv2 = nn.Conv1d(16, 16, 5, padding=2)
            self.fc = nn.Linear(16, 3)

        def forward(self, x):  # x: (batch, time, channels)
            b, tt, cc = x.shape
            x = x.view(b, cc, tt) if bug else x.permute(0, 2, 1)
            x = F.relu(self.conv2(F.relu(self.conv1(x))))
            return self.fc(x.amax(dim=2))

    model = TemporalCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = DataLoader(TensorDataset(x[:512], y[:512]), batch_size=32, shuffle=True)
    with watch(model, optimizer):
        for _ in range(4):
            for xb, yb in loader:
                optimizer.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                optimizer.step()
    return _accuracy(model, x[512:], y[512:])


@bug(
    "loss_at_chance",
    note="a rare-class detector (digit 9 against the rest, 10% positives) whose labels were "
    "shuffled apart from the images: the loss settles at the labels' entropy, 0.33, "
    "well under ln 2, and the model never predicts a 9",
)
def chance_imbalanced_labels_unpaired(watch, bug=True):
    X, digit = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    y = torch.tensor(digit == 9).long()
    if bug:
        y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(X[:1400], y[:1400]), batch_size=64, shuffle=True)
    with watch(model, optimizer):
        for _ in range(6):
            for xb, yb in loader:
                optimizer.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                optimizer.step()
    with torch.no_grad():  # recall of the rare class on held-out digits
        truth = torch.tensor(digit[1400:] == 9)
        return (model(X[1400:]).argmax(1).bool() & truth).sum().item() / truth.sum().item()


@bug("batch_mixing", where="rnn",
     note="a per-frame tagger whose GRU keeps the default layout (time first) but is fed "
          "(batch, time, features), scored per frame on (batch, classes, time): the targets "
          "share the input's layout, and the GRU runs along the batch")
def mix_per_frame_tagger_time_first_gru(watch, bug=True):
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(330, 12, 4, generator=g)
    labels = (frames[..., :2].cumsum(1)[..., 0] > 0).long()  # depends on the past frames

    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(4, 24, batch_first=not bug)
            self.out = nn.Linear(24, 2)

        def forward(self, x):  # (batch, time, features)
            h, _ = self.rnn(x)
            return self.out(h).transpose(1, 2)  # (batch, classes, time)

    model = Tagger()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    loader = DataLoader(TensorDataset(frames[:300], labels[:300]), batch_size=32, shuffle=True)
    with watch(model, optimizer):
        for _ in range(6):
            for xb, yb in loader:
                optimizer.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                optimizer.step()
    with torch.no_grad():  # one sequence at a time, as at inference
        return sum((model(frames[i : i + 1]).argmax(1) == labels[i : i + 1]).float().mean().item()
                   for i in range(300, 330)) / 30


@bug("saturated_activation", where="<loop>:tanh",
     note="an Elman RNN written out in the step function over an nn.ParameterDict (no "
          "module forward at all), fed sensor readings in their raw units (hundreds)")
def sat_hand_written_rnn_raw_units(watch, bug=True):
    g = torch.Generator().manual_seed(0)
    readings = 300 + 80 * torch.randn(300, 10, 3, generator=g)  # raw sensor units
    labels = (readings[:, :, 0].mean(1) > 300).long()
    inputs = readings if bug else (readings - 300) / 80
    params = nn.ParameterDict({
        "w_in": nn.Parameter(torch.randn(3, 32) / 3 ** 0.5),
        "w_rec": nn.Parameter(torch.randn(32, 32) / 32 ** 0.5),
        "w_out": nn.Parameter(torch.randn(32, 2) / 32 ** 0.5),
    })

    def logits(x):
        h = x.new_zeros(x.shape[0], 32)
        for t in range(x.shape[1]):
            h = torch.tanh(x[:, t] @ params["w_in"] + h @ params["w_rec"])
        return h @ params["w_out"]

    optimizer = torch.optim.Adam(params.parameters(), lr=3e-3)
    with watch(params, optimizer):
        for _ in range(5):
            for k in torch.randperm(260, generator=g).split(26):
                optimizer.zero_grad()
                F.cross_entropy(logits(inputs[k]), labels[k]).backward()
                optimizer.step()
    with torch.no_grad():
        return (logits(inputs[260:]).argmax(1) == labels[260:]).float().mean().item()


@bug("symmetric_weights", where="gru.weight",
     note="a GRU classifier whose weights were all set with nn.init.constant_ 'for a "
          "reproducible start': each gate's rows stay equal (the gates differ), so the 32 "
          "hidden units are one")
def sym_gru_constant_init(watch, bug=True):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 10, 4, generator=g)
    y = (x[:, :, 0].sum(1) > 0).long() + 2 * (x[:, :, 1].sum(1) > 0).long()

    class Reader(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(4, 32, batch_first=True)
            self.head = nn.Linear(32, 4)

        def forward(self, seq):
            return self.head(self.gru(seq)[0][:, -1])

    model = Reader()
    if bug:
        for name, p in model.named_parameters():
            nn.init.constant_(p, 0.05 if "weight" in name else 0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = DataLoader(TensorDataset(x[:440], y[:440]), batch_size=32, shuffle=True)
    with watch(model, optimizer):
        for _ in range(5):
            for xb, yb in loader:
                optimizer.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                optimizer.step()
    with torch.no_grad():
        return (model(x[440:]).argmax(1) == y[440:]).float().mean().item()
