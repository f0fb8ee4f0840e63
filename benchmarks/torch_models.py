"""PyTorch baselines: the study's noisy CNNs and the reference-style concatenation critic.

Written to mirror :mod:`ibjax.models` (same layers, same noise placement; the noise is on in every mode,
training and evaluation alike, as in the study) so that the baselines do the same work. Only imported
when torch is installed.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Noise(nn.Module):
    """Add N(0, std^2) noise, in every mode (the study keeps the noise on in evaluation too)."""

    def __init__(self, std: float):
        super().__init__()
        self.std = float(std)

    def forward(self, x):
        return x + self.std * torch.randn_like(x) if self.std > 0 else x


def _conv(cin, cout, k, stride):
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)


class BasicBlock(nn.Module):
    """conv-bn-relu-noise-conv-bn, + shortcut, relu, noise (noise after the first ReLU and the add ReLU)."""

    def __init__(self, cin, cout, stride, gamma):
        super().__init__()
        self.conv1, self.bn1 = _conv(cin, cout, 3, stride), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = _conv(cout, cout, 3, 1), nn.BatchNorm2d(cout)
        self.noise1, self.noise2 = Noise(gamma), Noise(gamma)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(_conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.noise1(F.relu(self.bn1(self.conv1(x))))
        y = self.bn2(self.conv2(y))
        return self.noise2(F.relu(y + self.shortcut(x)))


class ResNet18(nn.Module):
    """ResNet-18, CIFAR variant (3x3 stride-1 stem, no max-pool); returns (logits, T 512-d)."""

    def __init__(self, num_classes=10, gamma_xt=0.4, gamma_ty=0.4, widths=(64, 128, 256, 512)):
        super().__init__()
        self.stem = nn.Sequential(_conv(3, widths[0], 3, 1), nn.BatchNorm2d(widths[0]), nn.ReLU())
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            for j in range(2):
                blocks.append(BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1, gamma_xt))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.noise_t = Noise(gamma_ty)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x):
        t = self.noise_t(self.blocks(self.stem(x)).mean(dim=(2, 3)))
        return self.classifier(t), t


class SmallCNN(nn.Module):
    """Mirror of ibjax's SmallCNN: conv-bn-relu-noise blocks with 2x2 max-pool between; returns (logits, T)."""

    def __init__(self, num_classes=10, widths=(32, 64, 128), gamma_xt=0.4, gamma_ty=0.4):
        super().__init__()
        layers, cin = [], 3
        for i, w in enumerate(widths):
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            layers += [_conv(cin, w, 3, 1), nn.BatchNorm2d(w), nn.ReLU(), Noise(gamma_xt)]
            cin = w
        self.features = nn.Sequential(*layers)
        self.noise_t = Noise(gamma_ty)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x):
        t = self.noise_t(self.features(x).mean(dim=(2, 3)))
        return self.classifier(t), t


def make_cnn(name: str, num_classes: int = 10, gamma_xt: float = 0.4, gamma_ty: float = 0.4, widths=None) -> nn.Module:
    """``widths``: per-stage widths as ibjax's model of that name has them (None: the defaults here)."""
    if name == "resnet18":
        return ResNet18(num_classes, gamma_xt, gamma_ty, **({"widths": tuple(widths)} if widths else {}))
    if name == "small_cnn":
        return SmallCNN(num_classes, **({"widths": tuple(widths)} if widths else {}), gamma_xt=gamma_xt, gamma_ty=gamma_ty)
    raise ValueError(f"no torch baseline for model {name!r}; choose 'resnet18' or 'small_cnn'")


def badnets_(x: torch.Tensor, size: int = 5) -> torch.Tensor:
    """BadNets in place on NCHW images in [0, 1]: a pure red size x size patch in the top-left corner."""
    x[:, :, :size, :size] = 0.0
    x[:, 0, :size, :size] = 1.0
    return x


class ConcatCritic(nn.Module):
    """The reference's concatenation critic f(a, b) = MLP([a, b]), ReLU hidden layers, scalar output."""

    def __init__(self, da: int, db: int, hidden=(128, 128)):
        super().__init__()
        dims, layers = (da + db, *hidden), []
        for i, o in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(i, o), nn.ReLU()]
        layers.append(nn.Linear(dims[-1], 1))
        self.net = nn.Sequential(*layers)

    def forward(self, ab):
        return self.net(ab).squeeze(-1)


def infonce_reference(critic: ConcatCritic, a: torch.Tensor, b: torch.Tensor, negatives: int) -> torch.Tensor:
    """InfoNCE the reference way: a_i concatenated with its positive and each of K gathered b_j.

    Forms the (B, K + 1, da + db) concatenations and runs the whole MLP on all B * (K + 1) rows.
    Returns the estimate (nats, capped at log(K + 1)).
    """
    bsz, da = a.shape
    neg = torch.randint(0, bsz, (bsz, negatives), device=a.device)
    pos_in = torch.cat([a, b], dim=1)[:, None, :]
    neg_in = torch.cat([a[:, None, :].expand(bsz, negatives, da), b[neg]], dim=2)
    scores = critic(torch.cat([pos_in, neg_in], dim=1)).float()  # [B, K + 1]
    return scores[:, 0].mean() - torch.logsumexp(scores, dim=1).mean() + math.log(negatives + 1)
