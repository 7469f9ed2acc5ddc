"""A tiny randomly-initialised CLIP text tower (CLIPTextModelWithProjection) and a local tokenizer,
saved to a folder, so the hf-clip encoder's real `from_pretrained` path runs offline.
Usage: python tests/make_tiny_clip.py OUT_DIR"""
import sys

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, PreTrainedTokenizerFast

WORDS = "a an the of on in with and is small large dark light white grey shirt shoe bag dress coat boot".split()


def build(out_dir: str) -> None:
    torch.manual_seed(0)
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<s>", "</s>"] + WORDS + [",", "."])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                        bos_token="<s>", eos_token="</s>", model_max_length=16)
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=16, projection_dim=24,
                            pad_token_id=0, bos_token_id=2, eos_token_id=3)
    CLIPTextModelWithProjection(config).eval().save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


if __name__ == "__main__":
    build(sys.argv[1])
