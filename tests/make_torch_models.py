"""Builds small random PyTorch models in the layouts of torchvision's ResNet, timm's DeiT, the
official ConvNeXt and the GPT4Image authors' checkpoints, saves them as .pth and saves their logits
on a fixed input, for the conversion test. Written for the test (torchvision/timm cannot be imported
on the CPU-only wheel set); only the parameter names and the forward maths must match theirs.
Usage: python tests/make_torch_models.py OUT_DIR"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, c, stride, down):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, c, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.downsample = down

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (self.downsample(x) if self.downsample is not None else x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, c, stride, down):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, 4 * c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * c)
        self.downsample = down

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (self.downsample(x) if self.downsample is not None else x))


class ResNet(nn.Module):  # torchvision names: conv1, bn1, layerN.M.*, downsample.0/1, fc
    def __init__(self, block, layers, num_classes):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (c, n) in enumerate(zip((64, 128, 256, 512), layers)):
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                down = None
                if j == 0 and (stride != 1 or cin != c * block.expansion):
                    down = nn.Sequential(nn.Conv2d(cin, c * block.expansion, 1, stride, bias=False),
                                         nn.BatchNorm2d(c * block.expansion))
                blocks.append(block(cin, c, stride, down))
                cin = c * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(cin, num_classes)

    def features(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return x.mean((2, 3))

    def forward(self, x):
        return self.fc(self.features(x))


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        a = ((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5).softmax(-1)
        return self.proj((a @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class ViTBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, 16, 16)


class DeiT(nn.Module):  # timm names: cls_token, pos_embed, patch_embed.proj, blocks.N.*, norm, head
    def __init__(self, dim, heads, num_classes, image_size):
        super().__init__()
        self.patch_embed = PatchEmbed(dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, (image_size // 16) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[ViTBlock(dim, heads) for _ in range(12)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def features(self, x):
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1) + self.pos_embed
        return self.norm(self.blocks(x))[:, 0]

    def forward(self, x):
        return self.head(self.features(x))


class LayerNormCF(nn.Module):  # channels-first LayerNorm of the official ConvNeXt
    def __init__(self, c):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))

    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, 1e-6).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.5))

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):  # official names: downsample_layers.i.j, stages.i.j.*, norm, head
    def __init__(self, depths, dims, num_classes):
        super().__init__()
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), LayerNormCF(dims[0]))]
            + [nn.Sequential(LayerNormCF(dims[i]), nn.Conv2d(dims[i], dims[i + 1], 2, 2)) for i in range(3)])
        self.stages = nn.ModuleList([nn.Sequential(*[ConvNeXtBlock(d) for _ in range(n)]) for n, d in zip(depths, dims)])
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)

    def features(self, x):
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        return self.norm(x.mean((2, 3)))

    def forward(self, x):
        return self.head(self.features(x))


def randomise_norm_stats(model):
    """Non-trivial BatchNorm statistics and affine terms, so a mis-mapped name shows in the logits."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
        if isinstance(m, (nn.LayerNorm, LayerNormCF)):
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    out = Path(ap.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    models = {
        "torchvision-resnet18": ResNet(BasicBlock, [2, 2, 2, 2], 10),
        "torchvision-resnet50": ResNet(Bottleneck, [3, 4, 6, 3], 10),
        "timm-deit_small": DeiT(384, 6, 10, 64),
        "convnext-convnext_tiny": ConvNeXt([3, 3, 9, 3], [96, 192, 384, 768], 10),
    }
    logits = {"x": x.numpy()}
    with torch.no_grad():
        for name, m in models.items():
            randomise_norm_stats(m)
            m.eval()
            logits[name] = m(x).numpy()
            torch.save(m.state_dict(), out / f"{name}.pth")
        # the authors' ResNet checkpoint: {'model': WrapperModel state dict, 'acc1', 'epoch'}
        r = models["torchvision-resnet50"]
        proj = nn.Sequential(nn.Linear(2048, 64, bias=False), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 32))
        randomise_norm_stats(proj)
        proj.eval()
        sd = {f"model.{k}": v for k, v in r.state_dict().items()}
        sd.update({f"proj_layer.{k}": v for k, v in proj.state_dict().items()})
        torch.save({"model": sd, "acc1": 76.7, "epoch": 119}, out / "gpt4image-resnet50.pth.tar")
        logits["gpt4image-resnet50-proj"] = proj(r.features(x)).numpy()
        # the authors' DeiT checkpoint: timm names + proj_layer (no BN, biased first Linear) + args
        d = models["timm-deit_small"]
        dproj = nn.Sequential(nn.Linear(384, 64), nn.ReLU(), nn.Linear(64, 32))
        sd = dict(d.state_dict(), **{f"proj_layer.{k}": v for k, v in dproj.state_dict().items()})
        torch.save({"model": sd, "epoch": 299, "args": argparse.Namespace(lamb=0.3)}, out / "gpt4image-deit_small.pth")
        logits["gpt4image-deit_small-proj"] = dproj(d.features(x)).numpy()
    np.savez(out / "logits.npz", **logits)


if __name__ == "__main__":
    sys.exit(main())
