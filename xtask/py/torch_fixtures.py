"""Writes TorchScript (.pt, traced + frozen) and torch.export (.pt2) files of
small models with their inputs and torch's outputs as .npy, for the torch
importer's tests. `--big` writes the full-size models (not committed).

usage: torch_fixtures.py OUT_DIR [--big]
"""

import os
import sys

import numpy as np
import torch
import torchvision
from torch import nn
from torch.nn import functional as F
from torchvision.models.resnet import Bottleneck


class ConvRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(16, 33, 3, stride=2)

    def forward(self, x):
        return torch.relu(self.conv(x))


def mlp(widths):
    layers = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class SmallResNet(nn.Module):
    """torchvision's Bottleneck blocks at reduced width (ResNet-50's layout
    with one block per stage)."""

    def __init__(self, width=8, classes=10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 2 * width, 7, 2, 3, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        blocks, cin = [], 2 * width
        for i, planes in enumerate([width, 2 * width, 4 * width, 8 * width]):
            stride = 1 if i == 0 else 2
            down = nn.Sequential(
                nn.Conv2d(cin, planes * 4, 1, stride, bias=False),
                nn.BatchNorm2d(planes * 4),
            )
            blocks.append(Bottleneck(cin, planes, stride, down))
            cin = planes * 4
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class Encoder(nn.Module):
    """A BERT-style encoder: token + position embeddings, LayerNorm, then
    nn.TransformerEncoder (GELU, post-norm, batch first)."""

    def __init__(self, vocab, d, heads, ff, layers, seq):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(1, seq, d) * 0.02)
        self.norm = nn.LayerNorm(d)
        layer = nn.TransformerEncoderLayer(
            d, heads, ff, dropout=0.1, activation="gelu", batch_first=True
        )
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, ids):
        return self.enc(self.norm(self.tok(ids) + self.pos))


class OpsMix(nn.Module):
    """The aten ops the other fixtures do not reach, in one graph."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.convt = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.ln = nn.LayerNorm(16)
        self.fc = nn.Linear(16, 16)
        self.w = nn.Parameter(torch.randn(16, 16) * 0.1)
        self.b = nn.Parameter(torch.randn(16) * 0.1)

    def forward(self, x):
        y = F.silu(self.conv(x)) + F.hardswish(x) * 0.5
        y = torch.sub(y, torch.sigmoid(x), alpha=0.25)
        y = y / (1.5 + torch.tanh(y))
        p = F.avg_pool2d(y, 2)
        u = F.interpolate(p, scale_factor=2.0, mode="nearest")
        v = F.interpolate(p, size=(16, 16), mode="bilinear", align_corners=False)
        z = torch.cat([u, v], dim=1)
        z = F.pad(z, (1, 1, 2, 0))
        z = z[:, :, 1:17, 2:18]
        t = self.ln(z.mean(dim=2))
        t = torch.addmm(self.b, t[0], self.w)
        s = torch.matmul(t, t.t()) / 16
        s = torch.bmm(s.unsqueeze(0), self.fc(t).unsqueeze(0))
        s = F.log_softmax(s, dim=-1) + F.softmax(s, dim=1)
        s = s.squeeze(0).permute(1, 0).reshape(4, 64)
        r = s.sum(dim=1, keepdim=True) + F.gelu(s, approximate="tanh").sum()
        ct = self.convt(x[:, :, :4, :4])
        r = r * ct.flatten(1).mean() - F.max_pool2d(x, 3, 2, 1).sum()
        return r, F.hardtanh(s, -0.5, 0.5)


class Cumsum(nn.Module):
    """Uses an op cpucc does not map, for the error-message test."""

    def forward(self, x):
        return torch.relu(x).cumsum(1)


def randomize(m):
    # Fresh BatchNorm statistics, LayerNorm affines and attention biases
    # are constants (0 or 1): make every such tensor random so the fixtures
    # test what it does.
    for name, t in list(m.named_parameters()) + list(m.named_buffers()):
        if t.dtype.is_floating_point and t.numel() > 0 and bool((t == t.flatten()[0]).all()):
            with torch.no_grad():
                if "var" in name or "weight" in name:
                    t.uniform_(0.5, 1.5)
                else:
                    t.uniform_(-0.2, 0.2)


def small():
    yield "conv_relu", ConvRelu(), [torch.randn(1, 16, 32, 32)]
    yield "mlp", mlp([64, 128, 128, 10]), [torch.randn(8, 64)]
    yield "resnet_small", SmallResNet(), [torch.randn(1, 3, 64, 64)]
    # MobileNetV2's stages with one block each, at a quarter of the width.
    stages = [[1, 16, 1, 1], [6, 24, 1, 2], [6, 32, 2, 2], [6, 64, 1, 2], [6, 96, 1, 1],
              [6, 160, 1, 2], [6, 320, 1, 1]]
    yield "mobilenetv2_small", torchvision.models.mobilenet_v2(
        width_mult=0.25, num_classes=10, inverted_residual_setting=stages
    ), [torch.randn(1, 3, 64, 64)]
    yield "encoder2", Encoder(100, 64, 4, 128, 2, 16), [torch.randint(0, 100, (1, 16))]
    yield "ops_mix", OpsMix(), [torch.randn(1, 8, 16, 16)]
    yield "unsupported_cumsum", Cumsum(), [torch.randn(2, 8)]
    # Traced but not frozen: submodule calls and attributes stay in code/.
    yield "mlp_unfrozen", mlp([64, 32, 10]), [torch.randn(4, 64)]


def big():
    yield "resnet50", torchvision.models.resnet50(), [torch.randn(1, 3, 224, 224)]
    yield "mobilenet_v2", torchvision.models.mobilenet_v2(), [torch.randn(1, 3, 224, 224)]
    yield "bert_base", Encoder(30522, 768, 12, 3072, 12, 128), [
        torch.randint(0, 30522, (1, 128))
    ]


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    for name, model, inputs in big() if "--big" in sys.argv else small():
        randomize(model)
        model.eval()
        with torch.no_grad():
            want = model(*inputs)
        traced = torch.jit.trace(model, inputs, check_trace=False)
        if not name.endswith("_unfrozen"):
            traced = torch.jit.freeze(traced)
        torch.jit.save(traced, os.path.join(out, f"{name}.pt"))
        ep = torch.export.export(model, tuple(inputs))
        torch.export.save(ep, os.path.join(out, f"{name}.pt2"))
        for i, x in enumerate(inputs):
            np.save(os.path.join(out, f"{name}.input{i}.npy"), x.numpy())
        for i, y in enumerate(want if isinstance(want, tuple) else (want,)):
            np.save(os.path.join(out, f"{name}.output{i}.npy"), y.numpy())
        print(name, "ok")


if __name__ == "__main__":
    main()
