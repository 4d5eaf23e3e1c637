"""Update bugs: steps that do not move the weights, and optimizer calls made the wrong way.

Class 3, updates that do not move the weights: a per-epoch scheduler stepped every batch, a
gradient clip so tight that every update is crushed, a learning rate far too small.

Class 4, optimizer-call mistakes: ``optimizer.step()`` called again with no new backward,
gradient accumulation that sums the micro-batch losses instead of averaging them, and coupled
weight decay so strong that the weights shrink to nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.datasets import load_breast_cancer, load_digits, load_wine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.training_zoo.harness import bug


def _split(x: torch.Tensor, y: torch.Tensor, n_train: int) -> tuple[TensorDataset, TensorDataset]:
    order = torch.randperm(len(x))
    x, y = x[order], y[order]
    return TensorDataset(x[:n_train], y[:n_train]), TensorDataset(x[n_train:], y[n_train:])


def _digits(n_train: int = 1200, images: bool = False) -> tuple[TensorDataset, TensorDataset]:
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    if images:
        x = x.view(-1, 1, 8, 8)
    return _split(x, torch.tensor(data.target), n_train)


def _standardized(loader) -> tuple[torch.Tensor, torch.Tensor]:
    data = loader()
    x = torch.tensor(data.data, dtype=torch.float32)
    return (x - x.mean(0)) / x.std(0), torch.tensor(data.target)


def _accuracy(model: nn.Module, dataset: TensorDataset) -> float:
    model.eval()
    with torch.no_grad():
        x, y = dataset.tensors
        return (model(x).argmax(dim=1) == y).float().mean().item()


def _mlp(n_in: int = 64, hidden: int = 64, n_out: int = 10) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


def _lm_data(vocab: int = 16, seq_len: int = 12, n: int = 500):
    """Next-token data: sequences that count upwards modulo the vocabulary, with some noise."""
    start = torch.randint(0, vocab, (n, 1))
    text = (start + torch.arange(seq_len + 1) + (torch.rand(n, seq_len + 1) < 0.1).long()) % vocab
    return _split(text[:, :-1], text[:, 1:], int(n * 0.8))


class _SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(16 * 2 * 2, 10)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


# --- class 3: updates that do not move the weights --------------------------------------------


@bug(
    "lr_collapsed",
    "tiny_updates",
    note="StepLR(step_size=2, gamma=0.5) meant per epoch but stepped every batch: the learning "
    "rate halves every two batches and is ~1e-6 of its peak by the end of epoch 1",
)
def updates_steplr_per_batch(watch, bug=True):
    train_set, test_set = _digits()
    train_loader = DataLoader(train_set, batch_size=64, shuffle=True)
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)

    def train(epoch):
        model.train()
        for data, target in train_loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(data), target)
            loss.backward()
            optimizer.step()
            if bug:
                scheduler.step()

    with watch(model, optimizer):
        for epoch in range(1, 7):
            train(epoch)
            if not bug:
                scheduler.step()
    return _accuracy(model, test_set)


@bug(
    "lr_collapsed",
    "tiny_updates",
    note="ExponentialLR(gamma=0.9) stepped inside Trainer.training_step, once per batch: "
    "after a couple hundred batches the learning rate is ~1e-9 of its start",
)
def updates_exponentiallr_per_batch(watch, bug=True):
    class Trainer:
        def __init__(self, model, epochs):
            self.model = model
            self.epochs = epochs
            self.optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
            self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=0.9)

        def training_step(self, images, labels):
            self.optimizer.zero_grad()
            loss = F.cross_entropy(self.model(images), labels)
            loss.backward()
            self.optimizer.step()
            if bug:
                self.scheduler.step()
            return loss.item()

        def on_epoch_end(self):
            if not bug:
                self.scheduler.step()

        def fit(self, loader):
            with watch(self.model, self.optimizer):
                for _ in range(self.epochs):
                    self.model.train()
                    for images, labels in loader:
                        self.training_step(images, labels)
                    self.on_epoch_end()

    train_set, test_set = _digits(images=True)
    model = _SmallCNN()
    Trainer(model, epochs=4).fit(DataLoader(train_set, batch_size=64, shuffle=True))
    return _accuracy(model, test_set)


@bug(
    "lr_collapsed",
    "tiny_updates",
    note="Hugging Face-style loop steps the scheduler after every optimizer step, but "
    "MultiStepLR milestones [4, 5] were written in epochs: lr is 1/100 after 5 batches",
)
def updates_multisteplr_per_batch(watch, bug=True):
    train_set, test_set = _digits()
    model = nn.Sequential(
        nn.Linear(64, 32),
        nn.ReLU(),
        nn.Linear(32, 12),
        nn.ReLU(),
        nn.Linear(12, 32),
        nn.ReLU(),
        nn.Linear(32, 64),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    lr_scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[4, 5], gamma=0.1)
    num_epochs = 6
    train_dataloader = DataLoader(train_set, batch_size=64, shuffle=True)
    with watch(model, optimizer):
        for _ in range(num_epochs):
            model.train()
            for batch, _ in train_dataloader:
                loss = F.mse_loss(model(batch), batch)
                loss.backward()
                optimizer.step()
                if bug:
                    lr_scheduler.step()
                optimizer.zero_grad()
            if not bug:
                lr_scheduler.step()
    model.eval()
    with torch.no_grad():
        batch = test_set.tensors[0]
        return F.mse_loss(model(batch), batch).item()


@bug(
    "clipped_to_nothing",
    note="word_language_model-style loop with --clip 1e-4 instead of 0.25: every gradient "
    "is clipped to norm 1e-4, so even lr=20 barely moves the weights",
)
def updates_clip_tiny_max_norm_lstm(watch, bug=True):
    vocab = 16

    class RNNModel(nn.Module):
        def __init__(self, ntoken, ninp=16, nhid=32):
            super().__init__()
            self.encoder = nn.Embedding(ntoken, ninp)
            self.rnn = nn.LSTM(ninp, nhid, batch_first=True)
            self.decoder = nn.Linear(nhid, ntoken)

        def forward(self, tokens):
            output, _ = self.rnn(self.encoder(tokens))
            return self.decoder(output)

    train_set, test_set = _lm_data(vocab)
    model = RNNModel(vocab)
    clip = 1e-4 if bug else 0.25
    optimizer = torch.optim.SGD(model.parameters(), lr=20.0)
    criterion = nn.CrossEntropyLoss()

    def train():
        model.train()
        for data, targets in DataLoader(train_set, batch_size=20, shuffle=True):
            model.zero_grad()
            output = model(data)
            loss = criterion(output.view(-1, vocab), targets.reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()

    def evaluate():
        model.eval()
        with torch.no_grad():
            data, targets = test_set.tensors
            return criterion(model(data).view(-1, vocab), targets.reshape(-1)).item()

    with watch(model, optimizer):
        for _ in range(4):
            train()
            val_loss = evaluate()
    return val_loss


@bug(
    "clipped_to_nothing",
    note="clip_grad_norm_(model.parameters(), max_norm=1e-4) on an SGD classifier: every "
    "update is crushed to norm lr * 1e-4",
)
def updates_clip_tiny_max_norm_mlp(watch, bug=True):
    x, y = _standardized(load_breast_cancer)
    train_set, test_set = _split(x, y, 450)
    model = nn.Sequential(nn.Linear(30, 32), nn.ReLU(), nn.Linear(32, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    max_grad_norm = 1e-4 if bug else 1.0
    with watch(model, optimizer):
        for _ in range(6):
            for xb, yb in DataLoader(train_set, batch_size=32, shuffle=True):
                optimizer.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                nn.utils.clip_grad_norm_(model.parameters(), max_norm=max_grad_norm)
                optimizer.step()
    return _accuracy(model, test_set)


@bug(
    "clipped_to_nothing",
    note="autoencoder trained with a closure passed to optimizer.step(): the closure clips "
    "with max_norm=1e-4, so SGD hardly moves the weights",
)
def updates_clip_tiny_closure(watch, bug=True):
    train_set, test_set = _digits()
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 64), nn.Sigmoid())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    with watch(model, optimizer):
        for _ in range(5):
            for batch, _ in DataLoader(train_set, batch_size=32, shuffle=True):

                def closure(batch=batch):
                    optimizer.zero_grad()
                    loss = F.binary_cross_entropy(model(batch), batch)
                    loss.backward()
                    nn.utils.clip_grad_norm_(model.parameters(), 1e-4 if bug else 5.0)
                    return loss

                optimizer.step(closure)
    with torch.no_grad():
        batch = test_set.tensors[0]
        return F.binary_cross_entropy(model(batch), batch).item()


@bug(
    "tiny_updates",
    note="Adam(lr=3e-7): a typo for 3e-3; after the whole run the weights have hardly moved",
)
def updates_adam_lr_typo(watch, bug=True):
    train_set, test_set = _digits(images=True)
    model = _SmallCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-7 if bug else 3e-3)
    with watch(model, optimizer):
        for _ in range(4):
            model.train()
            for images, labels in DataLoader(train_set, batch_size=64, shuffle=True):
                optimizer.zero_grad()
                F.cross_entropy(model(images), labels).backward()
                optimizer.step()
    return _accuracy(model, test_set)


@bug(
    "tiny_updates",
    note="SGD with a fine-tuning learning rate (1e-5) on a model trained from scratch",
)
def updates_sgd_lr_too_small(watch, bug=True):
    x, y = _standardized(load_wine)
    train_set, test_set = _split(x, y, 140)
    model = nn.Sequential(nn.Linear(13, 32), nn.Tanh(), nn.Linear(32, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-5 if bug else 0.05, momentum=0.9)
    loader = DataLoader(train_set, batch_size=16, shuffle=True)
    with watch(model, optimizer):
        for _ in range(15):
            for xb, yb in loader:
                optimizer.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                optimizer.step()
    return _accuracy(model, test_set)


@bug(
    "tiny_updates",
    note="a hand-written label-smoothing loss (no chance level the monitor knows) and "
    "SGD(lr=2e-6), a typo for 2e-2",
)
def updates_lr_typo_handwritten_smoothing(watch, bug=True):
    train_set, test_set = _digits()
    model = _mlp()

    def smoothed_ce(logits, labels, eps=0.1):
        logp = logits.log_softmax(dim=1)
        soft = torch.full_like(logp, eps / (logp.shape[1] - 1))
        soft.scatter_(1, labels[:, None], 1 - eps)
        return -(soft * logp).sum(dim=1).mean()

    optimizer = torch.optim.SGD(model.parameters(), lr=2e-6 if bug else 2e-2, momentum=0.9)
    with watch(model, optimizer):
        for _ in range(3):
            for xb, yb in DataLoader(train_set, batch_size=32, shuffle=True):
                optimizer.zero_grad()
                smoothed_ce(model(xb), yb).backward()
                optimizer.step()
    return _accuracy(model, test_set)


@bug("tiny_updates", note="GRU tagger with RMSprop(lr=1e-6), copied from a config that meant 1e-3")
def updates_rmsprop_lr_too_small(watch, bug=True):
    vocab = 16

    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab, 16)
            self.gru = nn.GRU(16, 32, batch_first=True)
            self.out = nn.Linear(32, vocab)

        def forward(self, tokens):
            return self.out(self.gru(self.embed(tokens))[0])

    train_set, test_set = _lm_data(vocab)
    model = Tagger()
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-6 if bug else 3e-3)
    with watch(model, optimizer):
        for _ in range(4):
            model.train()
            for x, y in DataLoader(train_set, batch_size=20, shuffle=True):
                optimizer.zero_grad()
                F.cross_entropy(model(x).transpose(1, 2), y).backward()
                optimizer.step()
    model.eval()
    with torch.no_grad():
        x, y = test_set.tensors
        return (model(x).argmax(-1) == y).float().mean().item()


# --- class 4: optimizer-call mistakes ---------------------------------------------------------


@bug(
    "step_without_backward",
    note="train_step() already calls optimizer.step(); the loop calls it again, so every "
    "batch is applied twice (momentum pushes the second step)",
)
def updates_double_step(watch, bug=True):
    train_set, test_set = _digits()
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)

    def train_step(x, y):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.item()

    with watch(model, optimizer):
        for _ in range(4):
            for x, y in DataLoader(train_set, batch_size=64, shuffle=True):
                train_step(x, y)
                if bug:
                    optimizer.step()
    return _accuracy(model, test_set)


@bug(
    "step_without_backward",
    note="a stray optimizer.step() left after the batch loop: once an epoch Adam steps again "
    "on the last batch's gradients (the metric barely shows it)",
)
def updates_extra_step_after_loop(watch, bug=True):
    x, y = _standardized(load_breast_cancer)
    train_set, test_set = _split(x, y, 450)
    model = nn.Sequential(nn.Linear(30, 16), nn.ReLU(), nn.Linear(16, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    with watch(model, optimizer):
        for _ in range(5):
            model.train()
            for xb, yb in DataLoader(train_set, batch_size=50, shuffle=True):
                optimizer.zero_grad()
                loss = F.cross_entropy(model(xb), yb)
                loss.backward()
                optimizer.step()
            if bug:
                optimizer.step()
            model.eval()
            with torch.no_grad():
                val_acc = _accuracy(model, test_set)
    return val_acc


@bug(
    "step_without_backward",
    note="a warm-up helper sets the new lr and calls optimizer.step() 'to apply it': a second "
    "step on the old gradients every batch, at ever higher lr",
)
def updates_step_in_lr_helper(watch, bug=True):
    def set_lr(optimizer, lr):
        for group in optimizer.param_groups:
            group["lr"] = lr
        if bug:
            optimizer.step()

    train_set, test_set = _digits(images=True)
    model = _SmallCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    base_lr, warmup, step = 0.1, 30, 0
    with watch(model, optimizer):
        for _ in range(3):
            model.train()
            for images, labels in DataLoader(train_set, batch_size=32, shuffle=True):
                optimizer.zero_grad()
                F.cross_entropy(model(images), labels).backward()
                optimizer.step()
                step += 1
                set_lr(optimizer, base_lr * min(1.0, step / warmup))
    return _accuracy(model, test_set)


@bug(
    "accumulation_not_scaled",
    note="accumulates 8 micro-batches without dividing the loss by 8: with SGD the step is 8x "
    "the one the learning rate was tuned for",
)
def updates_accumulation_unscaled_sgd(watch, bug=True):
    train_set, test_set = _digits()
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    accumulation_steps = 8
    loader = DataLoader(train_set, batch_size=10, shuffle=True)  # 120 micro-batches an epoch
    with watch(model, optimizer, accumulation_steps=accumulation_steps):
        for _ in range(3):
            model.train()
            optimizer.zero_grad()
            for i, (x, y) in enumerate(loader):
                loss = F.cross_entropy(model(x), y)
                if not bug:
                    loss = loss / accumulation_steps
                loss.backward()
                if (i + 1) % accumulation_steps == 0:
                    optimizer.step()
                    optimizer.zero_grad()
    return _accuracy(model, test_set)


@bug(
    "accumulation_not_scaled",
    note="Hugging Face-style gradient_accumulation_steps=4 without loss / 4, on a GRU "
    "language model trained with SGD",
)
def updates_accumulation_unscaled_gru(watch, bug=True):
    vocab = 16

    class LanguageModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab, 16)
            self.gru = nn.GRU(16, 32, batch_first=True)
            self.lm_head = nn.Linear(32, vocab)

        def forward(self, input_ids, labels=None):
            logits = self.lm_head(self.gru(self.embed(input_ids))[0])
            loss = (
                None if labels is None else F.cross_entropy(logits.flatten(0, 1), labels.flatten())
            )
            return {"loss": loss, "logits": logits}

    train_set, test_set = _lm_data(vocab)
    model = LanguageModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=2.0, momentum=0.9)
    gradient_accumulation_steps = 4
    with watch(model, optimizer, accumulation_steps=gradient_accumulation_steps):
        for _ in range(3):
            model.train()
            for step, (input_ids, labels) in enumerate(DataLoader(train_set, batch_size=10)):
                loss = model(input_ids, labels=labels)["loss"]
                if not bug:
                    loss = loss / gradient_accumulation_steps
                loss.backward()
                if (step + 1) % gradient_accumulation_steps == 0:
                    optimizer.step()
                    optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        input_ids, labels = test_set.tensors
        return model(input_ids, labels=labels)["loss"].item()


@bug(
    "accumulation_not_scaled",
    note="accumulation over 4 micro-batches without dividing the loss, with AdamW: Adam "
    "normalises the step so the metric hardly changes, the gradient scale is still 4x",
)
def updates_accumulation_unscaled_adamw(watch, bug=True):
    x, y = _standardized(load_wine)
    train_set, test_set = _split(x, y, 140)
    model = nn.Sequential(nn.Linear(13, 32), nn.ReLU(), nn.Linear(32, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    accum = 4

    def micro_batches():
        yield from DataLoader(train_set, batch_size=5, shuffle=True)

    with watch(model, optimizer, accumulation_steps=accum):
        for _ in range(6):
            for i, (xb, yb) in enumerate(micro_batches(), start=1):
                loss = F.cross_entropy(model(xb), yb)
                (loss if bug else loss / accum).backward()
                if i % accum == 0:
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
    return _accuracy(model, test_set)


@bug(
    "accumulation_not_scaled",
    note="accumulation over 6 micro-batches whose fixed twin scales the loss in place "
    "(loss /= 6, the tensor handed to backward() is the loss function's own output)",
)
def updates_accumulation_unscaled_inplace(watch, bug=True):
    train_set, test_set = _digits()
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    accumulate = 6
    with watch(model, optimizer, accumulation_steps=accumulate):
        for _ in range(2):
            for i, (x, y) in enumerate(DataLoader(train_set, batch_size=8, shuffle=True)):
                loss = F.cross_entropy(model(x), y)
                if not bug:
                    loss /= accumulate
                loss.backward()
                if (i + 1) % accumulate == 0:
                    optimizer.step()
                    optimizer.zero_grad()
    return _accuracy(model, test_set)


@bug(
    "accumulation_not_scaled",
    note="a mixture-of-experts model adds its router's load-balancing loss to the task loss "
    "in place inside forward (loss += coef * aux, as Hugging Face MoE models do); the "
    "loop accumulates 4 micro-batches without dividing",
)
def updates_accumulation_unscaled_moe_aux(watch, bug=True):
    class Experts(nn.Module):
        def __init__(self, width=32, experts=4, classes=10):
            super().__init__()
            self.inp = nn.Linear(64, width)
            self.router = nn.Linear(width, experts)
            self.experts = nn.ModuleList(nn.Linear(width, width) for _ in range(experts))
            self.out = nn.Linear(width, classes)

        def forward(self, x, labels=None):
            h = torch.relu(self.inp(x))
            gates = torch.softmax(self.router(h), dim=-1)  # [batch, experts]
            mixed = sum(gates[:, k : k + 1] * e(h) for k, e in enumerate(self.experts))
            logits = self.out(torch.relu(mixed))
            if labels is None:
                return logits
            loss = F.cross_entropy(logits, labels)
            aux = gates.mean(dim=0).pow(2).sum() * gates.shape[-1]  # 1 when balanced
            loss += 0.01 * aux
            return loss

    train_set, test_set = _digits()
    model = Experts()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    accumulate = 4
    with watch(model, optimizer, accumulation_steps=accumulate):
        for _ in range(2):
            for i, (x, y) in enumerate(DataLoader(train_set, batch_size=10, shuffle=True)):
                loss = model(x, labels=y)
                (loss if bug else loss / accumulate).backward()
                if (i + 1) % accumulate == 0:
                    optimizer.step()
                    optimizer.zero_grad()
    return _accuracy(model, test_set)


@bug(
    "accumulation_not_scaled",
    note="two 10-class heads (the digit and its mirror image, 9 - digit), both losses handed "
    "to torch.autograd.backward([l1, l2]) over 4 accumulated micro-batches, neither "
    "divided",
)
def updates_accumulation_unscaled_two_losses(watch, bug=True):
    train_set, test_set = _digits()
    body = _mlp(n_out=32)
    digit_head, mirror_head = nn.Linear(32, 10), nn.Linear(32, 10)
    model = nn.ModuleDict({"body": body, "digit": digit_head, "mirror": mirror_head})
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    accumulate = 4

    class Digits(nn.Module):  # what the test split is scored with
        def forward(self, x):
            return digit_head(torch.relu(body(x)))

    with watch(model, optimizer, accumulation_steps=accumulate):
        for _ in range(2):
            for i, (x, y) in enumerate(DataLoader(train_set, batch_size=8, shuffle=True)):
                h = torch.relu(body(x))
                l1 = F.cross_entropy(digit_head(h), y)
                l2 = F.cross_entropy(mirror_head(h), 9 - y)
                if not bug:
                    l1, l2 = l1 / accumulate, l2 / accumulate
                torch.autograd.backward([l1, l2])
                if (i + 1) % accumulate == 0:
                    optimizer.step()
                    optimizer.zero_grad()
    return _accuracy(Digits(), test_set)


@bug(
    "weight_decay_collapse",
    note="SGD(weight_decay=0.5): meant 5e-4; the coupled decay shrinks every weight by 2.5% "
    "a step and the network collapses towards zero",
)
def updates_sgd_weight_decay_half(watch, bug=True):
    train_set, test_set = _digits()
    model = _mlp()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.05, momentum=0.9, weight_decay=0.5 if bug else 5e-4
    )
    with watch(model, optimizer):
        for _ in range(4):
            model.train()
            for x, y in DataLoader(train_set, batch_size=64, shuffle=True):
                optimizer.zero_grad()
                F.cross_entropy(model(x), y).backward()
                optimizer.step()
    return _accuracy(model, test_set)


@bug(
    "weight_decay_collapse",
    note="Adam(weight_decay=0.5) used as if it were AdamW: the L2 term goes through the "
    "adaptive scaling and drags the weights to zero; the fix is AdamW",
)
def updates_adam_coupled_weight_decay(watch, bug=True):
    train_set, test_set = _digits(images=True)
    model = _SmallCNN()
    opt_class = torch.optim.Adam if bug else torch.optim.AdamW
    optimizer = opt_class(model.parameters(), lr=3e-3, weight_decay=0.5)
    with watch(model, optimizer):
        for _ in range(4):
            model.train()
            for images, labels in DataLoader(train_set, batch_size=64, shuffle=True):
                optimizer.zero_grad()
                F.cross_entropy(model(images), labels).backward()
                optimizer.step()
    return _accuracy(model, test_set)


@bug(
    "weight_decay_collapse",
    note="RMSprop(lr=1e-4, weight_decay=0.5) on an MLP classifier: the L2 term is 5x the "
    "loss gradient from the first step; too few steps for the weights to collapse, "
    "the loss stays at chance",
)
def updates_rmsprop_decay_outweighs(watch, bug=True):
    train_set, test_set = _digits()
    model = _mlp()
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-4, weight_decay=0.5 if bug else 1e-5)
    with watch(model, optimizer):
        for _ in range(8):
            for x, y in DataLoader(train_set, batch_size=32, shuffle=True):
                optimizer.zero_grad()
                F.cross_entropy(model(x), y).backward()
                optimizer.step()
    return _accuracy(model, test_set)


@bug(
    "weight_decay_collapse",
    note="Adam(lr=1e-4, weight_decay=0.3) on a small CNN, where AdamW was meant: the coupled "
    "decay outweighs the gradient; the fixed twin is AdamW with the same numbers",
)
def updates_adam_decay_outweighs_cnn(watch, bug=True):
    train_set, test_set = _digits(images=True)
    model = _SmallCNN()
    opt_class = torch.optim.Adam if bug else torch.optim.AdamW
    optimizer = opt_class(model.parameters(), lr=1e-4 if bug else 3e-3, weight_decay=0.3)
    with watch(model, optimizer):
        for _ in range(2):
            for images, labels in DataLoader(train_set, batch_size=32, shuffle=True):
                optimizer.zero_grad()
                F.cross_entropy(model(images), labels).backward()
                optimizer.step()
    return _accuracy(model, test_set)


@bug(
    "weight_decay_collapse",
    note="a wine classifier (nn.Module subclass) with Adam(lr=2e-4, weight_decay=2.0), an "
    "AdamW-style decay given to Adam: every step mostly shrinks the weights",
)
def updates_adam_decay_outweighs_wine(watch, bug=True):
    x, y = _standardized(load_wine)
    train_set, test_set = _split(x, y, 140)

    class WineNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden = nn.Linear(13, 48)
            self.out = nn.Linear(48, 3)

        def forward(self, x):
            return self.out(F.gelu(self.hidden(x)))

    model = WineNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4, weight_decay=2.0 if bug else 1e-4)
    with watch(model, optimizer):
        for _ in range(12):
            for xb, yb in DataLoader(train_set, batch_size=8, shuffle=True):
                optimizer.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                optimizer.step()
    return _accuracy(model, test_set)


@bug(
    "weight_decay_collapse",
    note="RMSprop(weight_decay=0.1) on a small autoencoder: coupled decay beats the "
    "reconstruction gradient and the code layer collapses",
)
def updates_rmsprop_weight_decay(watch, bug=True):
    train_set, test_set = _digits()
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 64), nn.Sigmoid())
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3, weight_decay=0.1 if bug else 1e-5)
    with watch(model, optimizer):
        for _ in range(5):
            for batch, _ in DataLoader(train_set, batch_size=64, shuffle=True):
                optimizer.zero_grad()
                F.binary_cross_entropy(model(batch), batch).backward()
                optimizer.step()
    with torch.no_grad():
        batch = test_set.tensors[0]
        return F.binary_cross_entropy(model(batch), batch).item()
