"""Tiny random-weight VLMs (Qwen2-VL, LLaVA) with tokenizers made here: no downloads, seconds on a CPU."""
from __future__ import annotations

import torch

from agiqa.semantic.base import PAPER_PROMPTS

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]
LLAVA_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]

QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAVA_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | upper }}: "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

CORPUS = list(PAPER_PROMPTS) + [
    "user assistant system USER ASSISTANT Describe the picture. How well does the image match the prompt: a cat",
    "Rate the quality of this image. a red car on a street, a painting of mountains",
]
# Repeated so that the byte-level BPE learns " excellent", " good", ... as single tokens (level scores need them).
LEVEL_CORPUS = ["The quality of the image is excellent good fair poor bad. The match between the image and the "
                "description is excellent good fair poor bad. How would you rate the quality of this image? "
                'How well does this image match the description "a cat"?'] * 30


def make_tokenizer(specials: list[str], bos: str | None, eos: str, pad: str, unk: str | None = None,
                   corpus: list[str] = CORPUS):
    """A byte-level BPE trained on a few sentences, wrapped as a `PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    kwargs = dict(eos_token=eos, pad_token=pad)
    if bos:
        kwargs["bos_token"] = bos
    if unk:
        kwargs["unk_token"] = unk
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def qwen2_vl(text: dict, vision: dict, pixels: int, corpus: list[str] = CORPUS, vocab_size: int | None = None,
             seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """A random-weight Qwen2-VL of the given LM (`text`) and ViT (`vision`) sizes, built on `device` in `dtype`,
    whose processor resizes every image to `pixels` pixels; its tokenizer is trained on `corpus`. `vocab_size`
    overrides the LM's vocabulary size (default: the tokenizer's)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLProcessor
    from transformers import Qwen2VLVideoProcessor

    tok = make_tokenizer(QWEN_SPECIALS, bos=None, eos="<|im_end|>", pad="<|endoftext|>", corpus=corpus)
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=vocab_size or len(tok), **text, pad_token_id=ids["<|endoftext|>"],
                         eos_token_id=ids["<|im_end|>"], bos_token_id=None),
        vision_config=dict(**vision, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen2VLForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(default)
    image_processor = Qwen2VLImageProcessor(size={"shortest_edge": pixels, "longest_edge": pixels})
    processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tok,
                                 video_processor=Qwen2VLVideoProcessor(), chat_template=QWEN_TEMPLATE)
    return model, processor


def tiny_qwen2_vl(seed: int = 0, level_words: bool = False):
    """Tiny Qwen2-VL; with `level_words`, its tokenizer also knows the level words as single tokens."""
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=512,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]})
    vision = dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2)
    return qwen2_vl(text, vision, pixels=56 * 56, corpus=CORPUS + LEVEL_CORPUS if level_words else CORPUS, seed=seed)


def tiny_llava(seed: int = 0, level_words: bool = False):
    """Tiny LLaVA; with `level_words`, its tokenizer also knows the level words as single tokens."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    tok = make_tokenizer(LLAVA_SPECIALS, bos="<s>", eos="</s>", pad="<pad>", unk="<unk>",
                         corpus=CORPUS + LEVEL_CORPUS if level_words else CORPUS)
    ids = {t: tok.convert_tokens_to_ids(t) for t in LLAVA_SPECIALS}
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                       image_size=28, patch_size=14, projection_dim=32),
        text_config=LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                pad_token_id=ids["<pad>"], bos_token_id=ids["<s>"], eos_token_id=ids["</s>"]),
        image_token_index=ids["<image>"], vision_feature_layer=-1, vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    image_processor = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=LLAVA_TEMPLATE)
    return model, processor


def hand_levels(pair, image, question: str, answer: str) -> tuple[torch.Tensor, float]:
    """The Q-Align rule written out by hand for one unpadded sequence through the whole model (LM head included):
    the last position's logits of the five ' <word>' tokens -> softmax -> expectation over 5..1."""
    model, processor = pair
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    text = text + answer if text[-1].isspace() else text + " " + answer
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1]
    ids = [processor.tokenizer.convert_tokens_to_ids("Ġ" + word) for word in ("excellent", "good", "fair",
                                                                                   "poor", "bad")]
    chosen = logits[ids].double()
    probabilities = chosen.exp() / chosen.exp().sum()
    expectation = sum(p * v for p, v in zip(probabilities.tolist(), (5, 4, 3, 2, 1)))
    return probabilities.float(), expectation
