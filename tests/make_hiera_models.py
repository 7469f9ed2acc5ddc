"""Builds a tiny random Hiera (transformers' HieraConfig/HieraModel/HieraForImageClassification/
HieraForPreTraining) and writes the fixtures for the Hiera conversion test: the Hugging Face folders
(save_pretrained, safetensors), the same weights renamed to the official facebookresearch/hiera layout
(hiera/hiera.py `Hiera`, hiera/hiera_mae.py `MaskedAutoencoderHiera`) as .pth files, and reference
outputs on a fixed input. Every parameter (LayerNorms, biases and position embeddings included) is
overwritten with random values, so a wrong name mapping cannot pass by accident. torch/transformers
only (never mindspore in the same process); offline: nothing is downloaded.

Writes into OUT_DIR:
  hf-cls/            HieraForImageClassification   (config.json + model.safetensors)
  hf-model/          HieraModel with pooler, exactly hf-cls's `hiera.*` weights
  hf-mae/            HieraForPreTraining, encoder `hiera.*` = hf-cls's encoder; the rest random
  official-cls.pth   {"model": Hiera state dict in the official names}, from hf-cls
  official-mae.pth   {"model": MaskedAutoencoderHiera state dict in the official names}, from hf-mae
  logits.npz         x [3,3,64,64], logits (hf-cls, no softmax), pooled (hf-model pooler_output),
                     stage1..stage4 (hf-model reshaped_hidden_states[1..4], each [B, H, W, C])
The official pretrained files hold their state dict under "model_state", not "model"
(hiera_utils.pretrained_model); --state-key model_state writes that layout instead.

Usage: python tests/make_hiera_models.py OUT_DIR [--state-key model|model_state]"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from transformers import HieraConfig, HieraForImageClassification, HieraForPreTraining, HieraModel
from transformers.utils import logging as hf_logging


def tiny_config() -> HieraConfig:
    return HieraConfig(
        embed_dim=8, num_heads=[1, 2, 4, 8], depths=[1, 2, 2, 1], image_size=[64, 64],
        patch_size=[7, 7], patch_stride=[4, 4], patch_padding=[3, 3], query_stride=[2, 2],
        masked_unit_size=[8, 8], num_query_pool=3, masked_unit_attention=[True, True, False, False],
        mlp_ratio=4.0, num_labels=10, drop_path_rate=0.0,
        decoder_hidden_size=16, decoder_depth=1, decoder_num_heads=1)


@torch.no_grad()
def randomise(model: nn.Module, scale: float = 0.2) -> None:
    """Every parameter to random values: LayerNorm weights 1 + s*N(0,1), everything else s*N(0,1)."""
    ln_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.LayerNorm) and m.weight is not None}
    for p in model.parameters():
        noise = torch.randn_like(p) * scale
        p.copy_(1.0 + noise if id(p) in ln_weights else noise)


# ----- official facebookresearch/hiera names <-> transformers names ---------------------------------
# Follows the table of transformers' src/transformers/models/hiera/convert_hiera_to_hf.py
# (create_rename_keys), written out here independently. Official block i is HF stage s, layer j with
# i = sum(depths[:s]) + j; block.proj exists only in the first block of stages 1.. (dim != dim_out).
_BLOCK = {"norm1": "layernorm_before", "attn.qkv": "attn.qkv", "attn.proj": "attn.proj",
          "norm2": "layernorm_after", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2", "proj": "proj"}


def encoder_rename(config: HieraConfig, hf_prefix: str = "hiera.") -> dict:
    """official name -> HF name for the encoder (patch embed, pos embed, blocks)."""
    table = {"patch_embed.proj.weight": f"{hf_prefix}embeddings.patch_embeddings.projection.weight",
             "patch_embed.proj.bias": f"{hf_prefix}embeddings.patch_embeddings.projection.bias",
             "pos_embed": f"{hf_prefix}embeddings.position_embeddings"}
    i = 0
    for s, depth in enumerate(config.depths):
        for j in range(depth):
            for off, hf in _BLOCK.items():
                if off == "proj" and not (s > 0 and j == 0):
                    continue
                for leaf in ("weight", "bias"):
                    table[f"blocks.{i}.{off}.{leaf}"] = f"{hf_prefix}encoder.stages.{s}.layers.{j}.{hf}.{leaf}"
            i += 1
    return table


def cls_rename(config: HieraConfig) -> dict:
    """official `Hiera` (with norm + head) -> HieraForImageClassification."""
    table = encoder_rename(config)
    table.update({"norm.weight": "hiera.pooler.layernorm.weight", "norm.bias": "hiera.pooler.layernorm.bias",
                  "head.projection.weight": "classifier.weight", "head.projection.bias": "classifier.bias"})
    return table


def mae_rename(config: HieraConfig) -> dict:
    """official `MaskedAutoencoderHiera` -> HieraForPreTraining."""
    table = encoder_rename(config)
    for leaf in ("weight", "bias"):
        table[f"encoder_norm.{leaf}"] = f"encoder_norm.{leaf}"
        table[f"decoder_embed.{leaf}"] = f"decoder.decoder_embeddings.{leaf}"
        table[f"decoder_norm.{leaf}"] = f"decoder.decoder_norm.{leaf}"
        table[f"decoder_pred.{leaf}"] = f"decoder.decoder_pred.{leaf}"
        for i in range(config.decoder_depth):
            for off, hf in _BLOCK.items():
                if off != "proj":  # decoder blocks keep their width: no proj
                    table[f"decoder_blocks.{i}.{off}.{leaf}"] = f"decoder.decoder_block.layers.{i}.{hf}.{leaf}"
        for i in range(config.num_query_pool):  # the last fusion head is an nn.Identity (no weights)
            table[f"multi_scale_fusion_heads.{i}.{leaf}"] = f"multiscale_fusion.multi_scale_fusion_heads.{i}.{leaf}"
    table["mask_token"] = "decoder.mask_token"
    table["decoder_pos_embed"] = "decoder.decoder_position_embeddings"
    return table


def to_official(hf_sd: dict, table: dict) -> dict:
    inv = {hf: off for off, hf in table.items()}
    missing = sorted(set(hf_sd) - set(inv))
    extra = sorted(set(inv) - set(hf_sd))
    if missing or extra:
        raise KeyError(f"rename table does not cover the model: unmapped HF {missing[:5]}, absent HF {extra[:5]}")
    return {inv[k]: v.detach().clone().contiguous() for k, v in hf_sd.items()}


def from_official(off_sd: dict, table: dict) -> dict:
    return {table[k]: v for k, v in off_sd.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--state-key", default="model", choices=("model", "model_state"),
                    help="top-level key of the official .pth files (the released checkpoints use model_state)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    config = tiny_config()

    with torch.no_grad():
        cls = HieraForImageClassification(config)
        randomise(cls)
        cls.eval()
        model = HieraModel(config, add_pooling_layer=True)
        model.load_state_dict(cls.hiera.state_dict(), strict=True)
        model.eval()
        mae = HieraForPreTraining(config)
        randomise(mae)
        enc = {k: v for k, v in cls.hiera.state_dict().items() if not k.startswith("pooler.")}
        mae.hiera.load_state_dict(enc, strict=True)
        mae.eval()

        for name, m in (("hf-cls", cls), ("hf-model", model), ("hf-mae", mae)):
            m.save_pretrained(out / name, safe_serialization=True)

        off_cls = to_official(cls.state_dict(), cls_rename(config))
        off_mae = to_official(mae.state_dict(), mae_rename(config))
        torch.save({args.state_key: off_cls}, out / "official-cls.pth")
        torch.save({args.state_key: off_mae}, out / "official-mae.pth")

        rng = np.random.default_rng(0)
        x = rng.standard_normal((3, 3, 64, 64)).astype(np.float32)
        xt = torch.from_numpy(x)
        logits = cls(pixel_values=xt).logits
        mo = model(pixel_values=xt, output_hidden_states=True)
        stages = mo.reshaped_hidden_states
        assert len(stages) == len(config.depths) + 1, len(stages)
        ref = {"x": x, "logits": logits.numpy(), "pooled": mo.pooler_output.numpy()}
        for s in range(1, len(config.depths) + 1):
            ref[f"stage{s}"] = stages[s].numpy()

        # sanity: pooled = LayerNorm(mean of final tokens); logits = classifier(pooled)
        pooled = model.pooler.layernorm(mo.last_hidden_state.mean(1))
        torch.testing.assert_close(pooled, mo.pooler_output, rtol=0, atol=1e-6)
        torch.testing.assert_close(cls.classifier(pooled), logits, rtol=0, atol=1e-6)
        # sanity: the official files round-trip through the inverse rename into fresh models (strict)
        back = HieraForImageClassification(config).eval()
        sd = torch.load(out / "official-cls.pth", map_location="cpu", weights_only=True)[args.state_key]
        back.load_state_dict(from_official(sd, cls_rename(config)), strict=True)
        assert torch.equal(back(pixel_values=xt).logits, logits), "official-cls round trip changed the logits"
        back_mae = HieraForPreTraining(config).eval()
        sd = torch.load(out / "official-mae.pth", map_location="cpu", weights_only=True)[args.state_key]
        back_mae.load_state_dict(from_official(sd, mae_rename(config)), strict=True)
        noise = torch.rand(3, 4, generator=torch.Generator().manual_seed(1))  # 4 = (64/4/8)^2 mask units
        a, b = mae(pixel_values=xt, noise=noise), back_mae(pixel_values=xt, noise=noise)
        assert torch.equal(a.logits, b.logits) and torch.equal(a.loss, b.loss), "official-mae round trip differs"
        # sanity: the HF folders reload to the same outputs
        re_cls = HieraForImageClassification.from_pretrained(out / "hf-cls").eval()
        assert torch.equal(re_cls(pixel_values=xt).logits, logits)
        re_model = HieraModel.from_pretrained(out / "hf-model").eval()
        assert torch.equal(re_model(pixel_values=xt).pooler_output, mo.pooler_output)
        re_mae = HieraForPreTraining.from_pretrained(out / "hf-mae").eval()
        assert torch.equal(re_mae(pixel_values=xt, noise=noise).logits, a.logits)

    np.savez(out / "logits.npz", **ref)
    print(json.dumps({
        "out": str(out),
        "files": sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()),
        "params": {"hf-cls": sum(p.numel() for p in cls.parameters()),
                   "hf-model": sum(p.numel() for p in model.parameters()),
                   "hf-mae": sum(p.numel() for p in mae.parameters())},
        "official_tensors": {"cls": len(off_cls), "mae": len(off_mae)},
        "state_key": args.state_key,
        "shapes": {k: list(v.shape) for k, v in ref.items()},
    }))


if __name__ == "__main__":
    sys.exit(main())
