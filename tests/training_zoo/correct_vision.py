"""Correct vision training scripts: CNNs, a DCGAN, fine-tuning, torchvision models, AMP, schedules.

Every script here is correct code a careful engineer would accept, yet each is shaped like a
common bug (per-epoch StepLR, a frozen backbone, a zero-initialised head, two optimizers sharing
a backward, gradient accumulation, heavy clipping), so the monitor must stay quiet on all of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.training_zoo.harness import correct


def _digits(flat: bool = False):
    """load_digits as (train, test) TensorDatasets, pixels scaled to [0, 1]."""
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    if not flat:
        x = x.view(-1, 1, 8, 8)
    perm = torch.randperm(len(x))
    x, y = x[perm], y[perm]
    return TensorDataset(x[:1400], y[:1400]), TensorDataset(x[1400:], y[1400:])


def _accuracy(model: nn.Module, dataset: TensorDataset) -> float:
    model.eval()
    with torch.no_grad():
        x, y = dataset.tensors
        return (model(x).argmax(dim=1) == y).float().mean().item()


@correct
def vision_mnist_cnn_adadelta_steplr(watch):
    """pytorch/examples mnist on load_digits: Adadelta lr=1.0, StepLR(gamma=0.7) once per epoch."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 8, 3, 1, padding=1)
            self.conv2 = nn.Conv2d(8, 16, 3, 1, padding=1)
            self.dropout1 = nn.Dropout(0.25)
            self.dropout2 = nn.Dropout(0.5)
            self.fc1 = nn.Linear(16 * 4 * 4, 64)
            self.fc2 = nn.Linear(64, 10)

        def forward(self, x):
            x = F.relu(self.conv1(x))
            x = F.relu(self.conv2(x))
            x = F.max_pool2d(x, 2)
            x = self.dropout1(x)
            x = torch.flatten(x, 1)
            x = F.relu(self.fc1(x))
            x = self.dropout2(x)
            x = self.fc2(x)
            return F.log_softmax(x, dim=1)

    def train(model, loader, optimizer):
        model.train()
        for data, target in loader:
            optimizer.zero_grad()
            output = model(data)
            loss = F.nll_loss(output, target)
            loss.backward()
            optimizer.step()

    def test(model, loader):
        model.eval()
        correct_count = 0
        with torch.no_grad():
            for data, target in loader:
                pred = model(data).argmax(dim=1, keepdim=True)
                correct_count += pred.eq(target.view_as(pred)).sum().item()
        return correct_count / len(loader.dataset)

    train_set, test_set = _digits()
    train_loader = DataLoader(train_set, batch_size=64, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=256)
    model = Net()
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    with watch(model, optimizer):
        for _epoch in range(1, 4):
            train(model, train_loader, optimizer)
            acc = test(model, test_loader)
            scheduler.step()
    return acc


@correct
def vision_dcgan_two_optimizers(watch):
    """DCGAN loop on 8x8 digits: D steps on real+fake, then G's backward also fills D's grads."""
    data = load_digits()
    real_images = torch.tensor(data.data, dtype=torch.float32).view(-1, 1, 8, 8) / 8.0 - 1.0
    loader = DataLoader(TensorDataset(real_images), batch_size=64, shuffle=True, drop_last=True)
    nz = 16

    def weights_init(m):
        classname = m.__class__.__name__
        if classname.find("Conv") != -1:
            nn.init.normal_(m.weight.data, 0.0, 0.02)
        elif classname.find("BatchNorm") != -1:
            nn.init.normal_(m.weight.data, 1.0, 0.02)
            nn.init.constant_(m.bias.data, 0)

    netG = nn.Sequential(  # nz x 1 x 1 -> 1 x 8 x 8
        nn.ConvTranspose2d(nz, 32, 4, 1, 0, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(True),
        nn.ConvTranspose2d(32, 1, 4, 2, 1, bias=False),
        nn.Tanh(),
    )
    netD = nn.Sequential(  # 1 x 8 x 8 -> 1
        nn.Conv2d(1, 32, 4, 2, 1, bias=False),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(32, 64, 4, 2, 1, bias=False),
        nn.BatchNorm2d(64),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(64, 1, 2, 1, 0, bias=False),
        nn.Sigmoid(),
    )
    netG.apply(weights_init)
    netD.apply(weights_init)
    criterion = nn.BCELoss()
    optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-3, betas=(0.5, 0.999))
    optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-3, betas=(0.5, 0.999))
    real_label, fake_label = 1.0, 0.0

    with watch(nn.ModuleDict({"G": netG, "D": netD}), None):
        for _epoch in range(2):
            for (real,) in loader:
                # (1) Update D: maximize log(D(x)) + log(1 - D(G(z)))
                netD.zero_grad()
                b_size = real.size(0)
                label = torch.full((b_size,), real_label)
                output = netD(real).view(-1)
                errD_real = criterion(output, label)
                errD_real.backward()
                noise = torch.randn(b_size, nz, 1, 1)
                fake = netG(noise)
                label.fill_(fake_label)
                output = netD(fake.detach()).view(-1)
                errD_fake = criterion(output, label)
                errD_fake.backward()
                optimizerD.step()
                # (2) Update G: maximize log(D(G(z)))
                netG.zero_grad()
                label.fill_(real_label)
                output = netD(fake).view(-1)
                errG = criterion(output, label)
                errG.backward()
                optimizerG.step()
    # the generator's samples should sit far closer to the digits' mean image than noise does
    netG.eval()
    with torch.no_grad():
        samples = netG(torch.randn(512, nz, 1, 1))
    return F.mse_loss(samples.mean(0), real_images.mean(0)).item()


@correct
def vision_frozen_backbone_finetune(watch):
    """Fine-tune a new head on a frozen, BN-carrying backbone kept in eval mode."""
    train_set, test_set = _digits()

    class Backbone(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 8, 3, padding=1),
                nn.BatchNorm2d(8),
                nn.ReLU(),
                nn.Conv2d(8, 32, 3, padding=1, stride=2),
                nn.BatchNorm2d(32),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(2),
                nn.Flatten(),
            )

        def forward(self, x):
            return self.features(x)

    class Classifier(nn.Module):
        def __init__(self, backbone, num_classes):
            super().__init__()
            self.backbone = backbone
            self.head = nn.Linear(128, num_classes)

        def forward(self, x):
            return self.head(self.backbone(x))

    # "pretraining": a short supervised run on the first five digits only
    backbone = Backbone()
    pre = Classifier(backbone, 5)
    pre_opt = torch.optim.Adam(pre.parameters(), lr=3e-3)
    xs, ys = train_set.tensors
    keep = ys < 5
    xs, ys = xs[keep][:400], ys[keep][:400]
    for _ in range(25):
        pre_opt.zero_grad()
        F.cross_entropy(pre(xs), ys).backward()
        pre_opt.step()

    model = Classifier(backbone, 10)
    for p in model.backbone.parameters():
        p.requires_grad = False
    optimizer = torch.optim.SGD(model.head.parameters(), lr=0.1, momentum=0.9)
    loader = DataLoader(train_set, batch_size=64, shuffle=True)
    with watch(model, optimizer):
        for _epoch in range(3):
            model.train()
            model.backbone.eval()  # keep the pretrained BN statistics
            for x, y in loader:
                optimizer.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                optimizer.step()
    return _accuracy(model, test_set)


def _colour_images(n: int, size: int = 32):
    """Synthetic 3 x size x size noise images; class k shifts the whole image to colour k."""
    y = torch.randint(0, 10, (n,))
    angle = torch.arange(10) * (2 * torch.pi / 10)
    colours = 1.5 * torch.stack([angle.cos(), angle.sin(), (2 * angle).cos()], dim=1)
    x = torch.randn(n, 3, size, size) + colours[y][:, :, None, None]
    return x, y


@correct
def vision_torchvision_resnet18_zero_head(watch):
    """torchvision resnet18(num_classes=10), weights=None, zero-initialised fc, 32x32 inputs."""
    import torchvision

    x, y = _colour_images(96 + 100)
    train_set = TensorDataset(x[:96], y[:96])
    xv, yv = x[96:], y[96:]
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    nn.init.zeros_(model.fc.weight)  # start from uniform predictions
    nn.init.zeros_(model.fc.bias)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(train_set, batch_size=16, shuffle=True)
    criterion = nn.CrossEntropyLoss()
    with watch(model, optimizer):
        model.train()
        for images, labels in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        return (model(xv).argmax(1) == yv).float().mean().item()


@correct
def vision_onecycle_nesterov(watch):
    """OneCycleLR stepped every batch (as designed), SGD momentum nesterov, small CNN."""
    train_set, test_set = _digits()
    loader = DataLoader(train_set, batch_size=64, shuffle=True)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 2 * 2, 10),
    )
    epochs = 3
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=0.2, epochs=epochs, steps_per_epoch=len(loader)
    )
    with watch(model, optimizer):
        for _epoch in range(epochs):
            model.train()
            for x, y in loader:
                optimizer.zero_grad()
                F.cross_entropy(model(x), y).backward()
                optimizer.step()
                scheduler.step()
    return _accuracy(model, test_set)


@correct
def vision_bf16_autocast_cpu(watch):
    """bf16 autocast on CPU around the forward and loss; backward and step outside it."""
    train_set, test_set = _digits(flat=True)
    loader = DataLoader(train_set, batch_size=64, shuffle=True)
    model = nn.Sequential(
        nn.Linear(64, 128),
        nn.GELU(),
        nn.LayerNorm(128),
        nn.Linear(128, 64),
        nn.GELU(),
        nn.Linear(64, 10),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    with watch(model, optimizer):
        for _epoch in range(4):
            model.train()
            for x, y in loader:
                optimizer.zero_grad()
                with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
                    logits = model(x)
                    loss = F.cross_entropy(logits, y)
                loss.backward()
                optimizer.step()
    model.eval()
    with torch.no_grad(), torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        x, y = test_set.tensors
        return (model(x).argmax(1) == y).float().mean().item()


@correct
def vision_grad_accumulation_scaled(watch):
    """Accumulate 4 micro-batches: loss / 4, step and zero_grad every 4th, accumulation_steps=4."""
    train_set, test_set = _digits(flat=True)
    loader = DataLoader(train_set, batch_size=16, shuffle=True)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    accumulation_steps = 4
    with watch(model, optimizer, accumulation_steps=accumulation_steps):
        model.train()
        optimizer.zero_grad()
        for _epoch in range(4):
            for i, (x, y) in enumerate(loader):
                loss = F.cross_entropy(model(x), y) / accumulation_steps
                loss.backward()
                if (i + 1) % accumulation_steps == 0:
                    optimizer.step()
                    optimizer.zero_grad()
    return _accuracy(model, test_set)


@correct
def vision_clip_grad_norm_one(watch):
    """A Trainer-style loop clipping the global grad norm at a sensible 1.0 every step."""
    train_set, test_set = _digits()

    class Trainer:
        def __init__(self, model, optimizer, max_grad_norm=1.0):
            self.model = model
            self.optimizer = optimizer
            self.max_grad_norm = max_grad_norm
            self.loss_fn = nn.CrossEntropyLoss()

        def training_step(self, batch):
            x, y = batch
            loss = self.loss_fn(self.model(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad()
            return loss.item()

        def fit(self, loader, epochs):
            for _ in range(epochs):
                self.model.train()
                for batch in loader:
                    self.training_step(batch)

    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveMaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 10),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    trainer = Trainer(model, optimizer, max_grad_norm=1.0)
    with watch(model, optimizer):
        trainer.fit(DataLoader(train_set, batch_size=50, shuffle=True), epochs=3)
    return _accuracy(model, test_set)


@correct
def vision_dropout_eval_train_each_epoch(watch):
    """BN + dropout MLP; validation in eval mode inside the watch, then back to train mode."""
    train_set, test_set = _digits(flat=True)
    loader = DataLoader(train_set, batch_size=64, shuffle=True)
    model = nn.Sequential(
        nn.Linear(64, 128),
        nn.BatchNorm1d(128),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(128, 64),
        nn.BatchNorm1d(64),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(64, 10),
    )
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    best_loss, best_acc = float("inf"), 0.0
    with watch(model, optimizer):
        for _epoch in range(4):
            model.train()
            for x, y in loader:
                optimizer.zero_grad()
                loss = criterion(model(x), y)
                loss.backward()
                optimizer.step()
            model.eval()
            with torch.no_grad():
                xv, yv = test_set.tensors
                val_loss = criterion(model(xv), yv).item()
                acc = (model(xv).argmax(1) == yv).float().mean().item()
            if val_loss < best_loss:  # keep the accuracy of the best checkpoint
                best_loss, best_acc = val_loss, acc
    return best_acc


@correct
def vision_mlp_autoencoder_mse(watch):
    """Autoencoder on flattened digits: MSE between (N, 64) reconstructions and (N, 64) inputs."""
    train_set, test_set = _digits(flat=True)
    loader = DataLoader(train_set, batch_size=64, shuffle=True)

    class AutoEncoder(nn.Module):
        def __init__(self, dim=64, code=12):
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Linear(32, code))
            self.decoder = nn.Sequential(
                nn.Linear(code, 32), nn.ReLU(), nn.Linear(32, dim), nn.Sigmoid()
            )

        def forward(self, x):
            return self.decoder(self.encoder(x))

    model = AutoEncoder()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    criterion = nn.MSELoss()
    with watch(model, optimizer):
        for _epoch in range(5):
            for x, _ in loader:
                recon = model(x)
                loss = criterion(recon, x)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    xv = test_set.tensors[0]
    with torch.no_grad():
        # relative error: 1.0 means no better than predicting the mean image
        baseline = F.mse_loss(xv.mean(0).expand_as(xv), xv)
        return (F.mse_loss(model(xv), xv) / baseline).item()


@correct
def vision_zero_init_residual_bn(watch):
    """Small ResNet with each block's last BN gamma zero-initialised (zero_init_residual=True style)."""

    class BasicBlock(nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(channels)
            self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(channels)
            nn.init.zeros_(self.bn2.weight)  # each block starts as the identity

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return F.relu(out + x)

    class TinyResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(
                nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
            )
            self.layer1 = BasicBlock(16)
            self.layer2 = BasicBlock(16)
            self.pool = nn.AdaptiveAvgPool2d(2)
            self.fc = nn.Linear(16 * 4, 10)

        def forward(self, x):
            x = F.relu(self.stem(x))
            x = self.layer2(self.layer1(x))
            return self.fc(torch.flatten(self.pool(x), 1))

    train_set, test_set = _digits()
    model = TinyResNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.8)
    loader = DataLoader(train_set, batch_size=64, shuffle=True)
    with watch(model, optimizer):
        for _epoch in range(3):
            model.train()
            for x, y in loader:
                optimizer.zero_grad()
                F.cross_entropy(model(x), y).backward()
                optimizer.step()
            scheduler.step()  # once per epoch
    return _accuracy(model, test_set)


@correct
def vision_accumulation_logs_unscaled_loss(watch):
    """Accumulation over 4 micro-batches, loss / 4 handed to backward(); the loop logs the
    unscaled loss by scaling a detached copy back up in place (l = loss.detach(); l *= 4)."""
    train_set, test_set = _digits(flat=True)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    accumulate, logged = 4, []
    with watch(model, optimizer, accumulation_steps=accumulate):
        for _ in range(3):
            for i, (x, y) in enumerate(DataLoader(train_set, batch_size=16, shuffle=True)):
                loss = F.cross_entropy(model(x), y) / accumulate
                loss.backward()
                shown = loss.detach()
                shown *= accumulate  # in place on the detached alias: the loss as logged
                logged.append(shown)
                if (i + 1) % accumulate == 0:
                    optimizer.step()
                    optimizer.zero_grad()
    return _accuracy(model, test_set)
