"""Correct sequence training scripts: LSTM/GRU/transformer/embedding models, all correct.

Each is shaped like a common bug (tied weights, a manual SGD update with no optimizer, heavy
clipping at 0.25, a warm-up starting at lr 0, log_softmax over dim 1 of an (N, C, T) tensor,
padding rows that never update, a batch_first RNN) and must get no error or warning.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.training_zoo.harness import correct

_SENTENCES = [
    "the cat sat on the mat. ",
    "a dog ran to the park. ",
    "the sun is hot today. ",
    "we eat rice and fish. ",
    "it rains in the spring. ",
]


def _corpus(n_sentences: int) -> tuple[torch.Tensor, int]:
    """A character stream of randomly ordered short sentences, as ids, and the vocabulary size."""
    chars = sorted(set("".join(_SENTENCES)))
    index = {c: i for i, c in enumerate(chars)}
    order = torch.randint(0, len(_SENTENCES), (n_sentences,)).tolist()
    text = "".join(_SENTENCES[i] for i in order)
    return torch.tensor([index[c] for c in text], dtype=torch.long), len(chars)


@correct
def seq_char_lstm_tied_manual_sgd(watch):
    """word_language_model style: tied decoder, clip 0.25, manual `p.data.add_` SGD, no optimizer."""

    class RNNModel(nn.Module):
        def __init__(self, ntoken, ninp, nhid, nlayers, dropout=0.2, tie_weights=True):
            super().__init__()
            self.ntoken = ntoken
            self.drop = nn.Dropout(dropout)
            self.encoder = nn.Embedding(ntoken, ninp)
            self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=dropout)
            self.decoder = nn.Linear(nhid, ntoken)
            if tie_weights:
                if nhid != ninp:
                    raise ValueError("When using the tied flag, nhid must be equal to emsize")
                self.decoder.weight = self.encoder.weight
            self.init_weights()
            self.nhid = nhid
            self.nlayers = nlayers

        def init_weights(self):
            initrange = 0.1
            nn.init.uniform_(self.encoder.weight, -initrange, initrange)
            nn.init.zeros_(self.decoder.bias)
            nn.init.uniform_(self.decoder.weight, -initrange, initrange)

        def forward(self, input, hidden):
            emb = self.drop(self.encoder(input))
            output, hidden = self.rnn(emb, hidden)
            output = self.drop(output)
            decoded = self.decoder(output).view(-1, self.ntoken)
            return F.log_softmax(decoded, dim=1), hidden

        def init_hidden(self, bsz):
            weight = next(self.parameters())
            return (
                weight.new_zeros(self.nlayers, bsz, self.nhid),
                weight.new_zeros(self.nlayers, bsz, self.nhid),
            )

    def batchify(data, bsz):
        nbatch = data.size(0) // bsz
        data = data.narrow(0, 0, nbatch * bsz)
        return data.view(bsz, -1).t().contiguous()  # (time, batch): the LSTM is time-major

    def repackage_hidden(h):
        if isinstance(h, torch.Tensor):
            return h.detach()
        return tuple(repackage_hidden(v) for v in h)

    bptt = 24

    def get_batch(source, i):
        seq_len = min(bptt, len(source) - 1 - i)
        data = source[i : i + seq_len]
        target = source[i + 1 : i + 1 + seq_len].view(-1)
        return data, target

    stream, ntokens = _corpus(150)
    split = int(0.85 * len(stream))
    train_data = batchify(stream[:split], 16)
    val_data = batchify(stream[split:], 8)
    model = RNNModel(ntokens, 32, 32, 1, dropout=0.1)
    criterion = nn.NLLLoss()
    lr, clip = 5.0, 0.25

    def train():
        model.train()
        hidden = model.init_hidden(16)
        for i in range(0, train_data.size(0) - 1, bptt):
            data, targets = get_batch(train_data, i)
            model.zero_grad()
            hidden = repackage_hidden(hidden)
            output, hidden = model(data, hidden)
            loss = criterion(output, targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            for p in model.parameters():
                p.data.add_(p.grad, alpha=-lr)

    def evaluate(source):
        model.eval()
        total = 0.0
        hidden = model.init_hidden(8)
        with torch.no_grad():
            for i in range(0, source.size(0) - 1, bptt):
                data, targets = get_batch(source, i)
                output, hidden = model(data, hidden)
                total += len(data) * criterion(output, targets).item()
        return total / (len(source) - 1)

    with watch(model, None):
        for _epoch in range(4):
            train()
            val_loss = evaluate(val_data)
    return val_loss  # chance is ln(ntokens) ~ 3.1


@correct
def seq_transformer_adamw_warmup_cosine(watch):
    """Transformer encoder classifier, AdamW with no-decay groups, warm-up from 0 then cosine."""
    vocab, seq_len, n = 16, 12, 520
    tokens = torch.randint(2, vocab, (n, seq_len))
    # label: does token 5 occur before token 7 (first occurrences; absent counts as the end)?
    first5 = torch.where(tokens == 5, torch.arange(seq_len), seq_len).min(1).values
    first7 = torch.where(tokens == 7, torch.arange(seq_len), seq_len).min(1).values
    labels = (first5 < first7).long()
    tokens[:, 0] = 1  # [CLS]
    train_set = TensorDataset(tokens[:384], labels[:384])
    xv, yv = tokens[384:], labels[384:]

    class Classifier(nn.Module):
        def __init__(self, d_model=32, nhead=2, num_layers=2):
            super().__init__()
            self.embed = nn.Embedding(vocab, d_model)
            self.pos = nn.Parameter(torch.zeros(1, seq_len, d_model))
            layer = nn.TransformerEncoderLayer(
                d_model, nhead, dim_feedforward=64, dropout=0.0, batch_first=True
            )
            self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(d_model)
            self.classifier = nn.Linear(d_model, 2)
            nn.init.normal_(self.pos, std=0.02)

        def forward(self, input_ids):
            h = self.encoder(self.embed(input_ids) + self.pos)
            return self.classifier(self.norm(h[:, 0]))

    def get_cosine_schedule_with_warmup(optimizer, num_warmup_steps, num_training_steps):
        def lr_lambda(current_step):
            if current_step < num_warmup_steps:
                return float(current_step) / float(max(1, num_warmup_steps))
            progress = float(current_step - num_warmup_steps) / float(
                max(1, num_training_steps - num_warmup_steps)
            )
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)

    model = Classifier()
    no_decay = ["bias", "norm", "LayerNorm.weight"]
    grouped = [
        {
            "params": [
                p for n, p in model.named_parameters() if not any(nd in n for nd in no_decay)
            ],
            "weight_decay": 0.01,
        },
        {
            "params": [p for n, p in model.named_parameters() if any(nd in n for nd in no_decay)],
            "weight_decay": 0.0,
        },
    ]
    optimizer = torch.optim.AdamW(grouped, lr=3e-3)
    loader = DataLoader(train_set, batch_size=32, shuffle=True)
    epochs = 4
    total = epochs * len(loader)
    scheduler = get_cosine_schedule_with_warmup(optimizer, total // 10, total)
    with watch(model, optimizer):
        for _epoch in range(epochs):
            model.train()
            for input_ids, y in loader:
                loss = F.cross_entropy(model(input_ids), y)
                loss.backward()
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        return (model(xv).argmax(-1) == yv).float().mean().item()


@correct
def seq_gru_batch_first_classifier(watch):
    """GRU(batch_first=True) fed (batch, time, feat): which of 3 frequencies a noisy wave has."""
    n, steps = 600, 20
    y = torch.randint(0, 3, (n,))
    freq = torch.tensor([0.3, 0.8, 1.5])[y]
    phase = 2 * math.pi * torch.rand(n, 1)
    t = torch.arange(steps, dtype=torch.float32)
    wave = torch.sin(freq[:, None] * t[None, :] + phase) + 0.3 * torch.randn(n, steps)
    x = wave.unsqueeze(-1)  # (batch, time, 1)
    train_set = TensorDataset(x[:480], y[:480])
    xv, yv = x[480:], y[480:]

    class GRUClassifier(nn.Module):
        def __init__(self, hidden=32):
            super().__init__()
            self.gru = nn.GRU(1, hidden, batch_first=True)
            self.fc = nn.Linear(hidden, 3)

        def forward(self, x):
            out, _ = self.gru(x)  # out: (batch, time, hidden)
            return self.fc(out[:, -1, :])

    model = GRUClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loader = DataLoader(train_set, batch_size=32, shuffle=True)
    with watch(model, optimizer):
        for _epoch in range(5):
            for xb, yb in loader:
                optimizer.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                optimizer.step()
    with torch.no_grad():
        return (model(xv).argmax(1) == yv).float().mean().item()


@correct
def seq_embedding_bag_padding_idx_adagrad(watch):
    """Padded bag-of-words with padding_idx=0 (row 0 never updates), Adagrad, sentiment-like task."""
    vocab, max_len, n = 200, 12, 800
    # words 1..99 lean positive, 100..199 lean negative; a review is mostly one kind
    y = torch.randint(0, 2, (n,))
    lengths = torch.randint(3, max_len + 1, (n,))
    base = torch.where(y[:, None] == 1, 1, 100)
    lean = torch.rand(n, max_len) < 0.8
    words = torch.where(lean, base, 201 - base) + torch.randint(0, 99, (n, max_len))
    words = words.clamp(1, vocab - 1)
    mask = torch.arange(max_len)[None, :] < lengths[:, None]
    ids = torch.where(mask, words, torch.zeros_like(words))  # 0 = <pad>
    train_set = TensorDataset(ids[:640], y[:640])
    xv, yv = ids[640:], y[640:]

    class BagOfWords(nn.Module):
        def __init__(self, dim=24):
            super().__init__()
            self.embedding = nn.Embedding(vocab, dim, padding_idx=0)
            self.out = nn.Linear(dim, 2)

        def forward(self, ids):
            emb = self.embedding(ids)  # (N, L, D), pad rows are zeros
            count = (ids != 0).sum(1, keepdim=True).clamp(min=1)
            return self.out(emb.sum(1) / count)

    model = BagOfWords()
    optimizer = torch.optim.Adagrad(model.parameters(), lr=0.1)
    loader = DataLoader(train_set, batch_size=32, shuffle=True)
    with watch(model, optimizer):
        for _epoch in range(3):
            for xb, yb in loader:
                optimizer.zero_grad()
                loss = F.cross_entropy(model(xb), yb)
                loss.backward()
                optimizer.step()
    with torch.no_grad():
        return (model(xv).argmax(1) == yv).float().mean().item()


@correct
def seq_lstm_tagger_log_softmax_dim1(watch):
    """Sequence tagger: scores (N, C, T), log_softmax over dim=1 (the classes) into NLLLoss."""
    n, steps, vocab, n_tags = 400, 14, 30, 3
    tokens = torch.randint(0, vocab, (n, steps))
    # tag = token's bucket, shifted when the previous token was "large": needs context
    prev_large = torch.cat([torch.zeros(n, 1, dtype=torch.bool), tokens[:, :-1] >= 20], dim=1)
    tags = (tokens % 3 + prev_large.long()) % n_tags
    train_set = TensorDataset(tokens[:320], tags[:320])
    xv, yv = tokens[320:], tags[320:]

    class Tagger(nn.Module):
        def __init__(self, dim=32):
            super().__init__()
            self.embed = nn.Embedding(vocab, dim)
            self.lstm = nn.LSTM(dim, dim, batch_first=True, bidirectional=True)
            self.proj = nn.Linear(2 * dim, n_tags)

        def forward(self, tokens):
            h, _ = self.lstm(self.embed(tokens))  # (N, T, 2D)
            scores = self.proj(h).permute(0, 2, 1)  # (N, C, T): the layout NLLLoss wants
            return F.log_softmax(scores, dim=1)

    model = Tagger()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    criterion = nn.NLLLoss()
    loader = DataLoader(train_set, batch_size=32, shuffle=True)
    with watch(model, optimizer):
        for _epoch in range(6):
            model.train()
            for xb, yb in loader:
                optimizer.zero_grad()
                loss = criterion(model(xb), yb)  # (N, C, T) vs (N, T)
                loss.backward()
                optimizer.step()
    model.eval()
    with torch.no_grad():
        return (model(xv).argmax(1) == yv).float().mean().item()


@correct
def seq_sparse_embedding_two_optimizers(watch):
    """Embedding(sparse=True) under SparseAdam plus Adam for the rest: two step() per backward."""
    vocab, length, n = 500, 10, 800
    ids = torch.randint(0, vocab, (n, length))
    y = ((ids < vocab // 2).sum(1) > length // 2).long()  # mostly items from the first half?

    class Recommender(nn.Module):
        def __init__(self, dim=16):
            super().__init__()
            self.items = nn.Embedding(vocab, dim, sparse=True)
            self.mlp = nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Linear(32, 2))

        def forward(self, ids):
            return self.mlp(self.items(ids).mean(1))

    model = Recommender()
    sparse_opt = torch.optim.SparseAdam(list(model.items.parameters()), lr=3e-2)
    dense_opt = torch.optim.Adam(model.mlp.parameters(), lr=1e-2)
    loader = DataLoader(TensorDataset(ids[:640], y[:640]), batch_size=32, shuffle=True)
    with watch(model, None):
        for _epoch in range(6):
            for xb, yb in loader:
                sparse_opt.zero_grad()
                dense_opt.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                sparse_opt.step()
                dense_opt.step()
    with torch.no_grad():
        return (model(ids[640:]).argmax(1) == y[640:]).float().mean().item()


@correct
def seq_gru_attention_pooling(watch):
    """Softmax inside the model (attention weights over time, dim=1); raw logits into CE.

    Also holds a constant sinusoidal table as a plain tensor attribute (requires_grad False)
    and a registered buffer: neither is a parameter, on purpose.
    """
    n, steps, feat = 600, 10, 3
    x = torch.randn(n, steps, feat)
    # label: the sign of feature 0 at the time step where feature 1 peaks
    peak = x[:, :, 1].argmax(1)
    y = (x[torch.arange(n), peak, 0] > 0).long()

    class AttnGRU(nn.Module):
        def __init__(self, hidden=16):
            super().__init__()
            position = torch.arange(steps, dtype=torch.float32)[:, None]
            self.time_features = torch.cat([torch.sin(position / 4), torch.cos(position / 4)], 1)
            self.register_buffer("scale", torch.tensor(hidden**-0.5))
            self.gru = nn.GRU(feat + 2, hidden, batch_first=True, bidirectional=True)
            self.score = nn.Linear(2 * hidden, 1)
            self.out = nn.Linear(2 * hidden, 2)

        def forward(self, x):
            t = self.time_features.expand(x.size(0), -1, -1)
            h, _ = self.gru(torch.cat([x, t], dim=-1))  # (N, T, 2H)
            weights = torch.softmax(self.score(h) * self.scale, dim=1)  # over time
            pooled = (weights * h).sum(1)
            return self.out(pooled)

    model = AttnGRU()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loader = DataLoader(TensorDataset(x[:480], y[:480]), batch_size=32, shuffle=True)
    with watch(model, optimizer):
        for _epoch in range(8):
            for xb, yb in loader:
                optimizer.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                optimizer.step()
    with torch.no_grad():
        return (model(x[480:]).argmax(1) == y[480:]).float().mean().item()


@correct
def seq_time_first_gru_window_equals_batch(watch):
    """A time-first GRU (the default layout, fed x.transpose(0, 1)) whose windows are as long
    as the batch is large (24 and 24), with a ragged last batch: a (24, 24, F) input says
    nothing about which dim is the batch, and the last batch's (24, 10, F) is time-first."""
    torch.manual_seed(0)
    n, steps, features = 250, 24, 3
    x = torch.randn(n, steps, features)
    y = (x[:, :, 0].cumsum(1)[:, -1] > 0).long()  # the sign of a running sum: needs the sequence

    class Reader(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(features, 32)
            self.head = nn.Linear(32, 2)

        def forward(self, batch):  # batch: (N, T, F)
            _, last = self.rnn(batch.transpose(0, 1))  # (T, N, F) in, (1, N, H) out
            return self.head(last[0])

    model = Reader()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = DataLoader(TensorDataset(x[:200], y[:200]), batch_size=24, shuffle=True)
    with watch(model, optimizer):
        for _epoch in range(6):
            for xb, yb in loader:
                optimizer.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                optimizer.step()
    with torch.no_grad():
        return (model(x[200:]).argmax(1) == y[200:]).float().mean().item()


@correct
def seq_time_first_forecaster_scored_per_step(watch):
    """A default-layout (time-first) LSTM that predicts the next value at every step, its
    targets laid out as its input, (time, batch, 1): the loss's first dim is the time."""
    torch.manual_seed(0)
    t = torch.arange(0, 64 * 31, dtype=torch.float32) * 0.07
    series = torch.sin(t) + 0.5 * torch.sin(0.31 * t) + 0.05 * torch.randn(len(t))
    windows = series.reshape(64, 31)  # 64 windows of 31 values
    inputs = windows[:, :-1].T.unsqueeze(-1)  # (30, 64, 1), time first
    targets = windows[:, 1:].T.unsqueeze(-1)

    class Forecaster(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(1, 24)
            self.out = nn.Linear(24, 1)

        def forward(self, x):
            h, _ = self.lstm(x)
            return self.out(h)

    model = Forecaster()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    with watch(model, optimizer):
        for _epoch in range(12):
            for k in torch.randperm(56).split(12):  # batches of windows along dim 1
                optimizer.zero_grad()
                F.mse_loss(model(inputs[:, k]), targets[:, k]).backward()
                optimizer.step()
    with torch.no_grad():
        return F.mse_loss(model(inputs[:, 56:]), targets[:, 56:]).item()


@correct
def seq_forecaster_batches_in_time_order(watch):
    """A lag-window forecaster of a slowly drifting series, batched in time order (as time
    series often are): within one batch the targets vary far less than over the run."""
    g = torch.Generator().manual_seed(0)
    t = torch.arange(3000, dtype=torch.float32)
    series = torch.sin(t / 150) + 0.3 * torch.sin(t / 11) + 0.05 * torch.randn(3000, generator=g)
    lags = 16
    x = torch.stack([series[i : i + lags] for i in range(len(series) - lags)])
    y = series[lags:].unsqueeze(1)
    model = nn.Sequential(nn.Linear(lags, 32), nn.Tanh(), nn.Linear(32, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    with watch(model, optimizer):
        for _epoch in range(4):
            for start in range(0, 2400, 32):  # consecutive windows
                optimizer.zero_grad()
                F.mse_loss(model(x[start : start + 32]), y[start : start + 32]).backward()
                optimizer.step()
    with torch.no_grad():
        return (F.mse_loss(model(x[2400:]), y[2400:]) / y[2400:].var()).item()
