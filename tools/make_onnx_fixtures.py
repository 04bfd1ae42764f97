#!/usr/bin/env python3
"""Makes the ONNX fixtures of tests/fixtures/onnx/ (not run in CI).

Trains three small CNNs briefly with PyTorch on Fashion-MNIST and exports them with
`torch.onnx.export` (opset 17, batch dimension dynamic, eval mode so BatchNorm is folded or
kept as the exporter decides):

- resnet_proj: a ResNet with 1x1 projection shortcuts (conv+BN on the shortcut),
- mbv2: a MobileNetV2-style network (inverted residuals, depthwise 3x3, ReLU6),
- vgg: a VGG-style network (3x3 convs, max pooling, two fully connected layers),
- inception: two GoogLeNet-style blocks (1x1, 1x1 -> 3x3 and max pool -> 1x1 branches joined
  by a channel Concat),
- lenet_avg: LeNet-5 with its original average-pooling subsampling (nn.AvgPool2d(2)) and a
  padded 3x3 stride-1 average pool (count_include_pad, PyTorch's default) before a third conv.

Data: the prepared pool `images-idx3-ubyte` / `labels-idx1-ubyte` of
`$SEERNET_DATA/fashion-mnist` (default `~/.cache/seernet`; `cargo xtask fetch-data
fashion-mnist`). The last 64 images of the pool are never trained on: they are written to
`eq-images.u8` ([64, 1, 28, 28] bytes) with their labels `eq-labels.u8`, and ONNX Runtime's
logits for each model on them (inputs normalised as `(p/255 - 0.2860) / 0.3530`) to
`<model>.ort-logits.f32` (little-endian [64, 10]); the Rust equivalence test compares the
imported model against those.

Usage: pip install torch onnx onnxruntime; python3 tools/make_onnx_fixtures.py [NAME ...]
(all five models without names; the 64 images are written every time, identical for the same
pool).
"""

import os
import struct
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

MEAN, STD = 0.2860, 0.3530
OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "onnx"


def read_idx(path):
    data = Path(path).read_bytes()
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


class Block(nn.Module):
    """Basic residual block; a 1x1 conv + BN projection when the shape changes."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.proj = None
        if stride != 1 or cin != cout:
            self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        s = x if self.proj is None else self.proj(x)
        return F.relu(y + s)


class ResNetProj(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.layer1 = Block(16, 16, 1)
        self.layer2 = Block(16, 32, 2)
        self.layer3 = Block(32, 64, 2)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(torch.flatten(x, 1))


class InvRes(nn.Module):
    def __init__(self, cin, cout, stride, t):
        super().__init__()
        mid = cin * t
        self.use_res = stride == 1 and cin == cout
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        y = self.body(x)
        return x + y if self.use_res else y


class MbV2(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.blocks = nn.Sequential(InvRes(16, 16, 1, 3), InvRes(16, 24, 2, 3), InvRes(24, 24, 1, 3))
        self.head = nn.Sequential(nn.Conv2d(24, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU6())
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(torch.flatten(x, 1))


class Vgg(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.fc1 = nn.Linear(32 * 7 * 7, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = torch.flatten(self.features(x), 1)
        return self.fc2(F.relu(self.fc1(x)))


def conv_bn_relu(cin, cout, k):
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class InceptionBlock(nn.Module):
    """GoogLeNet-style block: 1x1, 1x1 -> 3x3, and 3x3 max pool -> 1x1 branches, concatenated."""

    def __init__(self, cin, c1, c3r, c3, cp):
        super().__init__()
        self.b1 = conv_bn_relu(cin, c1, 1)
        self.b3 = nn.Sequential(conv_bn_relu(cin, c3r, 1), conv_bn_relu(c3r, c3, 3))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn_relu(cin, cp, 1))

    def forward(self, x):
        return torch.cat([self.b1(x), self.b3(x), self.bp(x)], 1)


class Inception(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn_relu(1, 16, 3)
        self.a = InceptionBlock(16, 8, 8, 12, 4)
        self.b = InceptionBlock(24, 16, 12, 16, 8)
        self.fc = nn.Linear(40, 10)

    def forward(self, x):
        x = F.max_pool2d(self.stem(x), 2)
        x = F.max_pool2d(self.a(x), 2)
        x = F.adaptive_avg_pool2d(self.b(x), 1)
        return self.fc(torch.flatten(x, 1))


class LeNetAvg(nn.Module):
    """LeNet-5 with average-pooling subsampling, plus a padded 3x3 stride-1 average pool."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.AvgPool2d(3, 1, 1),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        )
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = torch.flatten(self.features(x), 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


MODELS = {
    "resnet_proj": ResNetProj,
    "mbv2": MbV2,
    "vgg": Vgg,
    "inception": Inception,
    "lenet_avg": LeNetAvg,
}


def train(model, x, y, steps, seed):
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(x), (128,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            print(f"  step {step}: loss {loss.item():.3f}", file=sys.stderr)
    model.eval()
    return model


def main():
    import onnxruntime as ort

    root = Path(os.environ.get("SEERNET_DATA") or Path.home() / ".cache" / "seernet") / "fashion-mnist"
    imgs = read_idx(root / "images-idx3-ubyte").reshape(-1, 1, 28, 28)
    labs = read_idx(root / "labels-idx1-ubyte")
    eq_x, eq_y = imgs[-64:], labs[-64:]
    tr_x = torch.tensor((imgs[:-64].astype(np.float32) / 255 - MEAN) / STD)
    tr_y = torch.tensor(labs[:-64].astype(np.int64))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "eq-images.u8").write_bytes(eq_x.tobytes())
    (OUT / "eq-labels.u8").write_bytes(eq_y.tobytes())
    eq_in = ((eq_x.astype(np.float32) / 255 - MEAN) / STD).astype(np.float32)
    names = sys.argv[1:] or list(MODELS)
    for name in names:
        make = MODELS[name]
        # 600 steps left the inception fixture at 55% on the 64 images; 1500 reach 98%.
        steps = int(os.environ.get("FIXTURE_STEPS") or (1500 if name == "inception" else 600))
        print(f"{name}: training {steps} steps", file=sys.stderr)
        model = train(make(), tr_x, tr_y, steps, seed=0)
        path = OUT / f"{name}.onnx"
        torch.onnx.export(
            model, torch.zeros(1, 1, 28, 28), str(path), opset_version=17,
            input_names=["image"], output_names=["logits"],
            dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}}, dynamo=False,
        )
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        logits = sess.run(None, {"image": eq_in})[0].astype("<f4")
        (OUT / f"{name}.ort-logits.f32").write_bytes(logits.tobytes())
        acc = (logits.argmax(1) == eq_y).mean() * 100
        with torch.no_grad():
            ref = model(torch.tensor(eq_in)).numpy()
        print(f"{name}: {path.stat().st_size} bytes, top-1 on the 64 images {acc:.1f}%, "
              f"max |torch - ort| {np.abs(ref - logits).max():.2e}", file=sys.stderr)


if __name__ == "__main__":
    main()
