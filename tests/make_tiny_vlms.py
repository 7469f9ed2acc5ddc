"""Builds tiny randomly-initialised vision-language models (+ processors) from configs and saves each to a
folder, so real `from_pretrained` loading code (AutoProcessor / AutoModelForImageTextToText) runs offline.
Usage: python tests/make_tiny_vlms.py KIND OUT_DIR [KIND OUT_DIR ...]
KIND in: blip2, instructblip, llava, llava-next, idefics3 (several in one process: torch imports once)

`idefics3` (Idefics3ForConditionalGeneration + Idefics3Processor, SmolVLM-Instruct's architecture, with a chat
template) stands in for "any chat VLM from the hub". Qwen2-VL cannot be built here: in transformers 5 every
processor with a `video_processor` slot (Qwen2-VL, Qwen2.5-VL, SmolVLM2, LLaVA-OneVision, ...) needs torchvision,
and no torchvision wheel works with this machine's CPU torch."""
import sys

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast


WORDS = ("a an the of on in with and is this image photo shows small large dark light black white grey red "
         "blue green shirt shoe bag dress coat boot trouser sandal sneaker pullover top picture object "
         "question answer write one sentence short description about describe detail you are helpful "
         "assistant user system what it there").split()
PUNCT = [":", ".", ",", "?", "!", "-", "'", "\""]

# tiny shared sizes
H, FF, HEADS, LAYERS = 32, 64, 2, 1

# LLaVA-1.5 style: "USER: <image>\n{text} ASSISTANT:"
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %}{{ ' ' }}"
    "{% else %}"
    "{{ message['role'].upper() + ': ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}{{ '<image>\n' }}{% endif %}{% endfor %}"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ '</s>' }}{% endif %}{{ ' ' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# Idefics3 / SmolVLM style: "<|im_start|>User:<image>{text}<end_of_utterance>\nAssistant:"
IDEFICS3_CHAT_TEMPLATE = (
    "<|im_start|>"
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}{{ ': ' + message['content'] }}"
    "{% else %}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for c in message['content'] %}"
    "{% if c['type'] == 'text' %}{{ c['text'] }}{% elif c['type'] == 'image' %}{{ '<image>' }}{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "<end_of_utterance>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

def make_tokenizer(base_specials=("<pad>", "</s>", "<s>", "<unk>"), extra_special=(), words=WORDS,
                   padding_side="left", **kwargs):
    """Word-level tokenizer (case-sensitive; lower-case, Capitalised and UPPER forms of every word are in the
    vocabulary). `extra_special` tokens are registered as special added tokens so they are never split."""
    pad, eos, bos, unk = base_specials
    forms = []
    for w in words:
        for f in (w, w.capitalize(), w.upper()):
            if f not in forms:
                forms.append(f)
    vocab = {w: i for i, w in enumerate(list(base_specials) + list(extra_special) + forms + PUNCT)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token=unk,
                                   pad_token=pad, padding_side=padding_side,
                                   extra_special_tokens=list(extra_special), **kwargs)


def _llama_text_config(tokenizer):
    return dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=H, intermediate_size=FF,
                num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=HEADS,
                max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)


def _clip_vision_config(image_size=32, patch_size=8):
    return dict(model_type="clip_vision_model", hidden_size=H, intermediate_size=FF, num_hidden_layers=LAYERS,
                num_attention_heads=HEADS, image_size=image_size, patch_size=patch_size, projection_dim=H)


def _blip2():
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor
    tokenizer = make_tokenizer()
    num_query = 4
    # the processor adds the <image> token to `tokenizer`
    processor = Blip2Processor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer,
                               num_query_tokens=num_query)
    config = Blip2Config(
        vision_config=dict(hidden_size=H, intermediate_size=FF, num_hidden_layers=LAYERS,
                           num_attention_heads=HEADS, image_size=32, patch_size=8),
        qformer_config=dict(hidden_size=H, intermediate_size=FF, num_hidden_layers=LAYERS,
                            num_attention_heads=HEADS, encoder_hidden_size=H, vocab_size=len(tokenizer)),
        text_config=_opt_text_config(tokenizer),
        num_query_tokens=num_query,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    return Blip2ForConditionalGeneration(config), processor


def _opt_text_config(tokenizer):
    return dict(model_type="opt", vocab_size=len(tokenizer), hidden_size=H, ffn_dim=FF,
                num_hidden_layers=LAYERS, num_attention_heads=HEADS, max_position_embeddings=128,
                word_embed_proj_dim=H, pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)


def _instructblip():
    from transformers import (BlipImageProcessor, InstructBlipConfig, InstructBlipForConditionalGeneration,
                              InstructBlipProcessor)
    tokenizer = make_tokenizer()
    qformer_tokenizer = make_tokenizer(padding_side="right")
    num_query = 4
    # the processor adds the <image> token to `tokenizer`
    processor = InstructBlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer,
                                      qformer_tokenizer, num_query_tokens=num_query)
    config = InstructBlipConfig(
        vision_config=dict(hidden_size=H, intermediate_size=FF, num_hidden_layers=LAYERS,
                           num_attention_heads=HEADS, image_size=32, patch_size=8),
        qformer_config=dict(hidden_size=H, intermediate_size=FF, num_hidden_layers=LAYERS,
                            num_attention_heads=HEADS, encoder_hidden_size=H, vocab_size=len(qformer_tokenizer),
                            pad_token_id=qformer_tokenizer.pad_token_id, max_position_embeddings=128),
        text_config=_opt_text_config(tokenizer),
        num_query_tokens=num_query,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    return InstructBlipForConditionalGeneration(config), processor


def _llava():
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    tokenizer = make_tokenizer(extra_special=("<image>",), chat_template=LLAVA_CHAT_TEMPLATE)
    image_size, patch_size = 32, 8
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor, tokenizer, patch_size=patch_size,
                               vision_feature_select_strategy="default", chat_template=LLAVA_CHAT_TEMPLATE,
                               image_token="<image>", num_additional_image_tokens=1)  # CLIP's CLS token
    config = LlavaConfig(
        vision_config=_clip_vision_config(image_size, patch_size),
        text_config=_llama_text_config(tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default", vision_feature_layer=-1, projector_hidden_act="gelu",
    )
    return LlavaForConditionalGeneration(config), processor


def _llava_next():
    from transformers import (LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessor,
                              LlavaNextProcessor)
    tokenizer = make_tokenizer(extra_special=("<image>",), chat_template=LLAVA_CHAT_TEMPLATE)
    image_size, patch_size = 32, 8
    pinpoints = [[32, 32], [32, 64], [64, 32], [64, 64]]
    image_processor = LlavaNextImageProcessor(size={"shortest_edge": image_size},
                                              crop_size={"height": image_size, "width": image_size},
                                              image_grid_pinpoints=pinpoints)
    processor = LlavaNextProcessor(image_processor, tokenizer, patch_size=patch_size,
                                   vision_feature_select_strategy="default", chat_template=LLAVA_CHAT_TEMPLATE,
                                   image_token="<image>", num_additional_image_tokens=1)
    config = LlavaNextConfig(
        vision_config=_clip_vision_config(image_size, patch_size),
        text_config=_llama_text_config(tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="default", vision_feature_layer=-1, projector_hidden_act="gelu",
    )
    return LlavaNextForConditionalGeneration(config), processor


def _idefics3():
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor,
                              Idefics3Processor)
    # <fake_token_around_image>, <image>, <end_of_utterance> are (re-)added by the processor; <global-img> and the
    # <row_i_col_j> tile tags must already be unsplittable tokens of the tokenizer
    specials = (["<fake_token_around_image>", "<image>", "<global-img>"]
                + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)])
    tokenizer = make_tokenizer(base_specials=("<pad>", "<end_of_utterance>", "<|im_start|>", "<unk>"),
                               extra_special=specials, chat_template=IDEFICS3_CHAT_TEMPLATE)
    image_size, patch_size, scale_factor = 32, 8, 2
    image_seq_len = (image_size // patch_size) ** 2 // scale_factor ** 2  # 4 tokens per 32x32 tile
    # a 224x224 image -> resized to 64x64 -> 2x2 tiles of 32x32 + one global 32x32 view
    image_processor = Idefics3ImageProcessor(size={"longest_edge": 2 * image_size},
                                             max_image_size={"longest_edge": image_size}, do_image_splitting=True)
    processor = Idefics3Processor(image_processor, tokenizer, image_seq_len=image_seq_len,
                                  chat_template=IDEFICS3_CHAT_TEMPLATE)
    config = Idefics3Config(
        vision_config=dict(hidden_size=H, intermediate_size=FF, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                           image_size=image_size, patch_size=patch_size),
        text_config=_llama_text_config(tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=scale_factor,
        pad_token_id=tokenizer.pad_token_id,
    )
    return Idefics3ForConditionalGeneration(config), processor


BUILDERS = {"blip2": _blip2, "instructblip": _instructblip, "llava": _llava, "llava-next": _llava_next,
            "idefics3": _idefics3}


def build(kind: str, out_dir: str) -> None:
    if kind not in BUILDERS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {sorted(BUILDERS)}")
    torch.manual_seed(0)
    model, processor = BUILDERS[kind]()
    model = model.eval()
    # generation defaults that match the tokenizer (no sampling, pad = tokenizer pad)
    tok = processor.tokenizer
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


if __name__ == "__main__":
    pairs = list(zip(sys.argv[1::2], sys.argv[2::2]))
    if len(sys.argv) < 3 or len(sys.argv) % 2 == 0 or any(kind not in BUILDERS for kind, _ in pairs):
        sys.exit(__doc__)
    for kind, out in pairs:
        build(kind, out)
