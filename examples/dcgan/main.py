"""A DCGAN on 8x8 digits, in the style of pytorch/examples' dcgan.

The data are scikit-learn's bundled 8x8 handwritten digits, scaled to [-1, 1], so nothing is
downloaded. A generator G maps noise of size ``--nz`` to an 8x8 image through transposed
convolutions; a discriminator D scores images with strided convolutions; each has its own Adam
optimizer with betas=(0.5, 0.999), as in the DCGAN paper.

``--bug detach-fake`` plants a common mistake: the generator's loss is computed on
``fake.detach()``, so no gradient ever reaches G and it never learns (while D learns to reject
its samples, so D's loss goes to zero and G's loss grows).
"""

import argparse
import time

import torch
import torch.nn as nn
import torch.optim as optim
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

BUGS = ("detach-fake",)


def weights_init(m):
    """The DCGAN initialisation: N(0, 0.02) for convolutions, N(1, 0.02) for batch norm."""
    classname = m.__class__.__name__
    if classname.find("Conv") != -1:
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif classname.find("BatchNorm") != -1:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class Generator(nn.Module):
    def __init__(self, nz, ngf, nc=1):
        super().__init__()
        self.main = nn.Sequential(
            # nz x 1 x 1 -> (ngf*4) x 2 x 2
            nn.ConvTranspose2d(nz, ngf * 4, 2, 1, 0, bias=False),
            nn.BatchNorm2d(ngf * 4),
            nn.ReLU(True),
            # -> (ngf*2) x 4 x 4
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf * 2),
            nn.ReLU(True),
            # -> nc x 8 x 8
            nn.ConvTranspose2d(ngf * 2, nc, 4, 2, 1, bias=False),
            nn.Tanh(),
        )

    def forward(self, input):
        return self.main(input)


class Discriminator(nn.Module):
    def __init__(self, ndf, nc=1):
        super().__init__()
        self.main = nn.Sequential(
            # nc x 8 x 8 -> ndf x 4 x 4
            nn.Conv2d(nc, ndf, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
            # -> (ndf*2) x 2 x 2
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ndf * 2),
            nn.LeakyReLU(0.2, inplace=True),
            # -> 1 x 1 x 1
            nn.Conv2d(ndf * 2, 1, 2, 1, 0, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, input):
        return self.main(input).view(-1, 1).squeeze(1)


def load_data():
    """The 8x8 digits as (N, 1, 8, 8) float tensors in [-1, 1]."""
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return TensorDataset(images * 2.0 - 1.0)


def train(args, netG, netD, device, dataloader, optimizerG, optimizerD, criterion, epoch):
    netG.train()
    netD.train()
    real_label, fake_label = 1.0, 0.0
    sums = {"loss_d": 0.0, "loss_g": 0.0, "d_x": 0.0, "d_g_z1": 0.0, "d_g_z2": 0.0}
    n_batches = 0
    for i, (real_cpu,) in enumerate(dataloader):
        if args.max_batches and i >= args.max_batches:
            break
        ############################
        # (1) Update D network: maximize log(D(x)) + log(1 - D(G(z)))
        ###########################
        netD.zero_grad()
        real = real_cpu.to(device)
        batch_size = real.size(0)
        label = torch.full((batch_size,), real_label, dtype=real.dtype, device=device)
        output = netD(real)
        errD_real = criterion(output, label)
        errD_real.backward()
        D_x = output.mean().item()

        noise = torch.randn(batch_size, args.nz, 1, 1, device=device)
        fake = netG(noise)
        label.fill_(fake_label)
        output = netD(fake.detach())
        errD_fake = criterion(output, label)
        errD_fake.backward()
        D_G_z1 = output.mean().item()
        errD = errD_real + errD_fake
        optimizerD.step()

        ############################
        # (2) Update G network: maximize log(D(G(z)))
        ###########################
        netG.zero_grad()
        label.fill_(real_label)  # fake labels are real for generator cost
        if args.bug == "detach-fake":
            # BUG (--bug detach-fake): detaching here cuts G out of its own loss's graph
            output = netD(fake.detach())
        else:
            output = netD(fake)
        errG = criterion(output, label)
        errG.backward()
        D_G_z2 = output.mean().item()
        optimizerG.step()

        if i % args.log_interval == 0:
            print(
                f"[{epoch}/{args.epochs}][{i}/{len(dataloader)}] "
                f"Loss_D: {errD.item():.4f} Loss_G: {errG.item():.4f} "
                f"D(x): {D_x:.4f} D(G(z)): {D_G_z1:.4f} / {D_G_z2:.4f}"
            )
        sums["loss_d"] += errD.item()
        sums["loss_g"] += errG.item()
        sums["d_x"] += D_x
        sums["d_g_z1"] += D_G_z1
        sums["d_g_z2"] += D_G_z2
        n_batches += 1
        if args.dry_run:
            break
    return {k: v / max(n_batches, 1) for k, v in sums.items()}


def test(netG, device, real_images, fixed_noise):
    """How far G's samples are from the data: the distance from each sample to its nearest
    real image (in pixel space, averaged over the samples). Lower is better."""
    netG.eval()
    with torch.no_grad():
        fake = netG(fixed_noise).flatten(1).cpu()
    netG.train()
    real = real_images.flatten(1)
    nearest = torch.cdist(fake, real).min(dim=1).values
    return nearest.mean().item()


def main():
    parser = argparse.ArgumentParser(description="PyTorch DCGAN example on 8x8 digits")
    parser.add_argument("--batch-size", type=int, default=64, help="input batch size (default: 64)")
    parser.add_argument("--nz", type=int, default=16, help="size of the latent z vector")
    parser.add_argument("--ngf", type=int, default=16, help="generator feature maps")
    parser.add_argument("--ndf", type=int, default=16, help="discriminator feature maps")
    parser.add_argument("--epochs", type=int, default=3, help="number of epochs to train for")
    parser.add_argument(
        "--max-batches",
        type=int,
        default=0,
        help="stop each epoch after N batches (default: 0, the whole data set)",
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=0.001,
        help="learning rate (default: 0.001; the DCGAN paper uses 0.0002 on larger images)",
    )
    parser.add_argument("--beta1", type=float, default=0.5, help="beta1 for adam (default: 0.5)")
    parser.add_argument("--no-cuda", action="store_true", default=False, help="disables CUDA")
    parser.add_argument("--dry-run", action="store_true", help="check a single training cycle")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default: 1)")
    parser.add_argument(
        "--log-interval", type=int, default=10, help="batches between log lines (default: 10)"
    )
    parser.add_argument("--netG", default="", help="path to netG (to continue training)")
    parser.add_argument("--netD", default="", help="path to netD (to continue training)")
    parser.add_argument("--outf", default="", help="folder to save checkpoints to (default: none)")
    parser.add_argument("--bug", choices=BUGS, default=None, help="plant a bug: " + ", ".join(BUGS))
    args = parser.parse_args()

    use_cuda = not args.no_cuda and torch.cuda.is_available()
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if use_cuda else "cpu")

    dataset = load_data()
    dataloader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(args.seed),
    )

    netG = Generator(args.nz, args.ngf).to(device)
    netG.apply(weights_init)
    if args.netG:
        netG.load_state_dict(torch.load(args.netG, map_location=device))
    netD = Discriminator(args.ndf).to(device)
    netD.apply(weights_init)
    if args.netD:
        netD.load_state_dict(torch.load(args.netD, map_location=device))

    criterion = nn.BCELoss()
    fixed_noise = torch.randn(256, args.nz, 1, 1, device=device)

    optimizerD = optim.Adam(netD.parameters(), lr=args.lr, betas=(args.beta1, 0.999))
    optimizerG = optim.Adam(netG.parameters(), lr=args.lr, betas=(args.beta1, 0.999))

    distance = test(netG, device, dataset.tensors[0], fixed_noise)
    print(f"epoch 0: sample distance to data {distance:.4f}")
    for epoch in range(1, args.epochs + 1):
        start = time.time()
        stats = train(
            args, netG, netD, device, dataloader, optimizerG, optimizerD, criterion, epoch
        )
        distance = test(netG, device, dataset.tensors[0], fixed_noise)
        print(
            f"epoch {epoch}: Loss_D {stats['loss_d']:.4f}, Loss_G {stats['loss_g']:.4f}, "
            f"D(x) {stats['d_x']:.4f}, D(G(z)) {stats['d_g_z1']:.4f} / {stats['d_g_z2']:.4f}, "
            f"sample distance to data {distance:.4f} ({time.time() - start:.1f}s)"
        )
        if args.outf:
            torch.save(netG.state_dict(), f"{args.outf}/netG_epoch_{epoch}.pth")
            torch.save(netD.state_dict(), f"{args.outf}/netD_epoch_{epoch}.pth")


if __name__ == "__main__":
    main()
