"""A word-level RNN language model, in the style of pytorch/examples' word_language_model.

The corpus is generated here, deterministically, from a tiny English grammar with
subject-verb agreement across relative clauses ("the dog that chases the cats runs ."), so
nothing is downloaded and a model that remembers context does measurably better than one that
only looks at the current word. Training is truncated backpropagation through time: the hidden
state is carried from one window to the next and detached from its history
(``repackage_hidden``), gradients are clipped to ``--clip``, and the learning rate of the SGD
optimizer is divided by 4 whenever the validation loss stops improving.

The data are laid out batch-first, (batch, time), and the RNN is built with
``batch_first=True``. ``--bug no-batch-first`` plants a common mistake: the RNN is built
without ``batch_first=True`` (so with the default ``batch_first=False``) while the data are
still fed as (batch, time). Nothing crashes, since the shapes work out, but the RNN now runs
its recurrence across the batch (across unrelated streams of text) and treats each time step
as a separate sequence.
"""

import argparse
import math
import random
import time

import torch
import torch.nn as nn

BUGS = ("no-batch-first",)

###############################################################################
# Data: a synthetic corpus from a tiny grammar
###############################################################################

NOUNS = {
    "sg": ["dog", "cat", "bird", "child", "teacher", "farmer", "horse", "girl"],
    "pl": ["dogs", "cats", "birds", "children", "teachers", "farmers", "horses", "girls"],
}
TRANSITIVE = {
    "sg": ["sees", "chases", "likes", "follows", "feeds"],
    "pl": ["see", "chase", "like", "follow", "feed"],
}
INTRANSITIVE = {
    "sg": ["runs", "sleeps", "sings", "waits", "laughs"],
    "pl": ["run", "sleep", "sing", "wait", "laugh"],
}
ADJECTIVES = ["big", "small", "old", "young", "happy", "quiet"]
DETERMINERS = {"sg": ["the", "a", "every"], "pl": ["the", "some", "many"]}
PLACES = ["park", "garden", "house", "field", "river"]


class Grammar:
    """Sentences of the form NP [that VP] VP [in the PLACE] ., with agreement."""

    def __init__(self, seed):
        self.rng = random.Random(seed)

    def noun_phrase(self, number):
        words = [self.rng.choice(DETERMINERS[number])]
        if self.rng.random() < 0.3:
            words.append(self.rng.choice(ADJECTIVES))
        words.append(self.rng.choice(NOUNS[number]))
        return words

    def verb_phrase(self, number):
        if self.rng.random() < 0.5:
            obj = self.rng.choice(("sg", "pl"))
            return [self.rng.choice(TRANSITIVE[number]), *self.noun_phrase(obj)]
        return [self.rng.choice(INTRANSITIVE[number])]

    def sentence(self):
        number = self.rng.choice(("sg", "pl"))
        words = self.noun_phrase(number)
        if self.rng.random() < 0.4:
            # the verb after the relative clause agrees with the subject, not with the
            # object of the clause: a dependency an RNN has to remember
            words += ["that", *self.verb_phrase(number)]
        words += self.verb_phrase(number)
        if self.rng.random() < 0.2:
            words += ["in", "the", self.rng.choice(PLACES)]
        words.append(".")
        return words


class Dictionary:
    def __init__(self):
        self.word2idx = {}
        self.idx2word = []

    def add_word(self, word):
        if word not in self.word2idx:
            self.idx2word.append(word)
            self.word2idx[word] = len(self.idx2word) - 1
        return self.word2idx[word]

    def __len__(self):
        return len(self.idx2word)


class Corpus:
    """Train, valid and test splits of the generated text, as 1-D tensors of word ids."""

    def __init__(self, n_sentences, seed):
        self.dictionary = Dictionary()
        grammar = Grammar(seed)
        n_eval = max(n_sentences // 10, 1)
        self.train = self.tokenize([grammar.sentence() for _ in range(n_sentences)])
        self.valid = self.tokenize([grammar.sentence() for _ in range(n_eval)])
        self.test = self.tokenize([grammar.sentence() for _ in range(n_eval)])

    def tokenize(self, sentences):
        ids = []
        for words in sentences:
            for word in [*words, "<eos>"]:
                ids.append(self.dictionary.add_word(word))
        return torch.tensor(ids, dtype=torch.long)


###############################################################################
# Model
###############################################################################


class RNNModel(nn.Module):
    """Container module with an encoder, a recurrent module, and a decoder."""

    def __init__(
        self,
        rnn_type,
        ntoken,
        ninp,
        nhid,
        nlayers,
        dropout=0.5,
        tie_weights=False,
        batch_first=True,
    ):
        super().__init__()
        self.ntoken = ntoken
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        if rnn_type not in ("LSTM", "GRU"):
            raise ValueError("--model must be LSTM or GRU")
        self.rnn = getattr(nn, rnn_type)(
            ninp,
            nhid,
            nlayers,
            # the RNN's own dropout acts between its layers only
            dropout=dropout if nlayers > 1 else 0.0,
            batch_first=batch_first,
        )
        self.decoder = nn.Linear(nhid, ntoken)

        # "Using the Output Embedding to Improve Language Models" (Press & Wolf, 2016)
        if tie_weights:
            if nhid != ninp:
                raise ValueError("When using the tied flag, nhid must be equal to emsize")
            self.decoder.weight = self.encoder.weight

        self.init_weights()
        self.rnn_type = rnn_type
        self.nhid = nhid
        self.nlayers = nlayers

    def init_weights(self):
        initrange = 0.1
        nn.init.uniform_(self.encoder.weight, -initrange, initrange)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -initrange, initrange)

    def forward(self, input, hidden=None):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        output = self.drop(output)
        decoded = self.decoder(output)
        return decoded.view(-1, self.ntoken), hidden


###############################################################################
# Training code
###############################################################################


def batchify(data, bsz, device):
    """Lay a 1-D stream of ids out as bsz rows, (bsz, nbatch): row b is one contiguous
    stretch of the text, and the rows are read in parallel, left to right."""
    nbatch = data.size(0) // bsz
    data = data[: nbatch * bsz]
    return data.view(bsz, -1).contiguous().to(device)


def repackage_hidden(h):
    """Wraps hidden states in new Tensors, to detach them from their history."""
    if h is None:
        return None
    if isinstance(h, torch.Tensor):
        return h.detach()
    return tuple(repackage_hidden(v) for v in h)


def windows(source, bptt):
    """The start of each full bptt-long window of a (batch, time) source; the incomplete
    window at the end is dropped, so that every batch has the same shape."""
    return range(0, source.size(1) - bptt, bptt)


def get_batch(source, i, bptt):
    """Inputs (batch, bptt) from column i, and the next-word targets flattened to match."""
    data = source[:, i : i + bptt]
    target = source[:, i + 1 : i + 1 + bptt].reshape(-1)
    return data, target


def evaluate(args, model, criterion, data_source):
    model.eval()
    total_loss = 0.0
    n_tokens = 0
    hidden = None
    with torch.no_grad():
        for i in windows(data_source, args.bptt):
            data, targets = get_batch(data_source, i, args.bptt)
            output, hidden = model(data, hidden)
            total_loss += criterion(output, targets).item() * targets.numel()
            n_tokens += targets.numel()
    return total_loss / max(n_tokens, 1)


def train(args, model, criterion, optimizer, train_data, epoch):
    model.train()
    total_loss = 0.0
    logged_batches = 0
    epoch_loss = 0.0
    n_batches = 0
    start_time = time.time()
    hidden = None
    n_windows = len(windows(train_data, args.bptt))
    for batch, i in enumerate(windows(train_data, args.bptt)):
        if args.max_batches and batch >= args.max_batches:
            break
        data, targets = get_batch(train_data, i, args.bptt)
        # Starting each batch, we detach the hidden state from how it was previously produced.
        # If we didn't, the model would try backpropagating all the way to start of the dataset.
        hidden = repackage_hidden(hidden)
        optimizer.zero_grad()
        output, hidden = model(data, hidden)
        loss = criterion(output, targets)
        loss.backward()

        # `clip_grad_norm` helps prevent the exploding gradient problem in RNNs / LSTMs.
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()

        total_loss += loss.item()
        logged_batches += 1
        epoch_loss += loss.item()
        n_batches += 1
        if batch % args.log_interval == 0 and batch > 0:
            cur_loss = total_loss / logged_batches
            elapsed = time.time() - start_time
            print(
                f"| epoch {epoch:3d} | {batch:5d}/{n_windows:5d} batches | "
                f"lr {optimizer.param_groups[0]['lr']:02.2f} | "
                f"ms/batch {elapsed * 1000 / logged_batches:5.2f} | "
                f"loss {cur_loss:5.2f} | ppl {math.exp(cur_loss):8.2f}"
            )
            total_loss = 0.0
            logged_batches = 0
            start_time = time.time()
        if args.dry_run:
            break
    return epoch_loss / max(n_batches, 1)


def main():
    parser = argparse.ArgumentParser(
        description="PyTorch RNN/LSTM/GRU language model on a synthetic corpus"
    )
    parser.add_argument("--model", type=str, default="LSTM", help="type of network (LSTM, GRU)")
    parser.add_argument(
        "--sentences", type=int, default=2000, help="sentences in the training corpus"
    )
    parser.add_argument("--emsize", type=int, default=32, help="size of word embeddings")
    parser.add_argument("--nhid", type=int, default=32, help="number of hidden units per layer")
    parser.add_argument("--nlayers", type=int, default=1, help="number of layers")
    parser.add_argument("--lr", type=float, default=20, help="initial learning rate")
    parser.add_argument("--clip", type=float, default=0.25, help="gradient clipping")
    parser.add_argument("--epochs", type=int, default=4, help="upper epoch limit")
    parser.add_argument(
        "--max-batches",
        type=int,
        default=0,
        help="stop each epoch after N batches (default: 0, the whole training set)",
    )
    parser.add_argument("--batch-size", type=int, default=8, metavar="N", help="batch size")
    parser.add_argument("--bptt", type=int, default=20, help="sequence length")
    parser.add_argument(
        "--dropout", type=float, default=0.1, help="dropout applied to layers (0 = no dropout)"
    )
    parser.add_argument(
        "--tied", action="store_true", help="tie the word embedding and softmax weights"
    )
    parser.add_argument("--seed", type=int, default=1111, help="random seed")
    parser.add_argument("--no-cuda", action="store_true", default=False, help="disables CUDA")
    parser.add_argument("--log-interval", type=int, default=20, metavar="N", help="report interval")
    parser.add_argument("--save", type=str, default="", help="path to save the final model")
    parser.add_argument("--dry-run", action="store_true", help="verify the code and the model")
    parser.add_argument("--bug", choices=BUGS, default=None, help="plant a bug: " + ", ".join(BUGS))
    args = parser.parse_args()

    # Set the random seed manually for reproducibility.
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if not args.no_cuda and torch.cuda.is_available() else "cpu")

    ###########################################################################
    # Load data
    ###########################################################################

    corpus = Corpus(args.sentences, args.seed)
    eval_batch_size = 10
    train_data = batchify(corpus.train, args.batch_size, device)
    val_data = batchify(corpus.valid, eval_batch_size, device)
    test_data = batchify(corpus.test, eval_batch_size, device)

    ###########################################################################
    # Build the model
    ###########################################################################

    ntokens = len(corpus.dictionary)
    model = RNNModel(
        args.model,
        ntokens,
        args.emsize,
        args.nhid,
        args.nlayers,
        args.dropout,
        args.tied,
        # BUG (--bug no-batch-first): the RNN is left at batch_first=False while the batches
        # are still (batch, time)
        batch_first=args.bug != "no-batch-first",
    ).to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)

    # Loop over epochs.
    best_val_loss = None
    for epoch in range(1, args.epochs + 1):
        epoch_start_time = time.time()
        train_loss = train(args, model, criterion, optimizer, train_data, epoch)
        val_loss = evaluate(args, model, criterion, val_data)
        print("-" * 89)
        print(
            f"| end of epoch {epoch:3d} | time: {time.time() - epoch_start_time:5.2f}s | "
            f"train loss {train_loss:5.2f} | valid loss {val_loss:5.2f} | "
            f"valid ppl {math.exp(val_loss):8.2f}"
        )
        print("-" * 89)
        if best_val_loss is None or val_loss < best_val_loss:
            best_val_loss = val_loss
            if args.save:
                torch.save(model.state_dict(), args.save)
        else:
            # Anneal the learning rate if no improvement has been seen in the validation set.
            for group in optimizer.param_groups:
                group["lr"] /= 4.0

    # Run on test data.
    test_loss = evaluate(args, model, criterion, test_data)
    print("=" * 89)
    print(f"| End of training | test loss {test_loss:5.2f} | test ppl {math.exp(test_loss):8.2f}")
    print("=" * 89)


if __name__ == "__main__":
    main()
