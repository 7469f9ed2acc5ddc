"""Builds a tiny randomly-initialised BLIP-2 (+ processor) from configs and saves it to a folder,
so the real `from_pretrained` loading path of the blip2 describer runs without any download.
Usage: python tests/make_tiny_blip2.py OUT_DIR"""
import sys

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor,
                          PreTrainedTokenizerFast)

WORDS = ("a an the of on in with and is this image photo shows small large dark light black white grey red "
         "blue green shirt shoe bag dress coat boot trouser sandal sneaker pullover top picture object "
         "question answer write one sentence short description about describe detail").split()


def build(out_dir: str) -> None:
    torch.manual_seed(0)
    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<s>", "<unk>"] + WORDS + [":", ".", ",", "?"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", pad_token="<pad>", padding_side="left")
    num_query = 4
    processor = Blip2Processor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer,
                               num_query_tokens=num_query)  # adds the <image> token to the tokenizer
    config = Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        qformer_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                            encoder_hidden_size=32, vocab_size=len(tokenizer)),
        text_config=dict(model_type="opt", vocab_size=len(tokenizer), hidden_size=32, ffn_dim=64,
                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=128,
                         word_embed_proj_dim=32, pad_token_id=0, bos_token_id=2, eos_token_id=1),
        num_query_tokens=num_query,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    model = Blip2ForConditionalGeneration(config).eval()
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


if __name__ == "__main__":
    build(sys.argv[1])
