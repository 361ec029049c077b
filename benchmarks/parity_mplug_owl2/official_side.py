"""Official side of the mPLUG-Owl2 parity check (see README.md). Run with the OLD transformers (4.31.0):

    PYTHONPATH=/tmp/owl_parity/site /work/main/.venv/bin/python official_side.py OUT_DIR
    PYTHONPATH=/tmp/owl_parity/site /work/main/.venv/bin/python official_side.py OUT_DIR --bench SMALL_DIR

The released package (X-PLUG/mPLUG-Owl, mPLUG-Owl2/mplug_owl2) is extracted from the mirror at run time, and the
helpers of MA-AGIQA's getFeature.py (disable_torch_init, load_image, expand2square) and Q-Align's QAlignScorer are cut
out of their mirrors with `ast`; none of that code is copied here. Writes a tiny random checkpoint in the official
layout, runs getFeature.py's forward and QAlignScorer's scoring on three small images, and stores the outputs as the
fixture tests/semantic/fixtures/mplug_owl2/. `--bench` times getFeature.py's loop on a "small" random model.
"""
import argparse
import ast
import io
import json
import re
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests/semantic/fixtures/mplug_owl2"
MIRRORS = {"owl": "/work/.mirror/X-PLUG+mPLUG-Owl/repo", "ma_agiqa": "/work/.mirror/wangpuyi+MA-AGIQA/repo",
           "q_align": "/work/.mirror/Q-Future+Q-Align/repo"}
QUESTIONS = {  # getFeature.py: question_type 2 and 1
    "semantic_content": "Evaluate the input image to determine if its quality is compromised due to a lack of "
                        "meaningful semantic content.",
    "coherence": "Evaluate if the image quality is compromised due to violations of coherence."}
LEVELS = ["excellent", "good", "fair", "poor", "bad"]
IMAGE_SIZES = [(40, 56), (56, 56), (64, 48)]  # (W, H)
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def git(mirror, *args):
    return subprocess.run(["git", "-C", MIRRORS[mirror], *args], check=True, capture_output=True).stdout


def cut(mirror, path, names, namespace):
    """Exec the (possibly nested) function / class definitions called `names` of an official script."""
    tree = ast.parse(git(mirror, "show", f"HEAD:{path}").decode())
    found = {n.name: n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in names}
    assert set(found) == set(names), (path, names, list(found))
    for name in names:
        exec(ast.unparse(found[name]), namespace)
    return namespace


def randomize(model):
    """Weight recipe: for EVERY entry of model.named_parameters() (not the buffers), in order,
    g = torch.Generator().manual_seed(zlib.crc32(name.encode())); v = 0.05 * torch.randn(param.shape, generator=g);
    the parameter becomes 1 + v if it is 1-D, its name contains "norm" or "ln" and ends in ".weight", else v."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            v = 0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(zlib.crc32(name.encode())))
            gain = p.ndim == 1 and ("norm" in name or "ln" in name) and name.endswith(".weight")
            p.copy_(1 + v if gain else v)
    return model.float().eval()


def train_tokenizer(folder):
    """LLaMA-like sentencepiece BPE (identity normaliser, dummy prefix, byte fallback, unk/bos/eos = 0/1/2, no pad)."""
    import sentencepiece as spm
    words = ("the of and to in is was for on that with as by at from it an be this are have or not but which you "
             "were they his her we all one there their has been if more when will would who so no she other its time "
             "also two into than them only some could new these may first any my now such like our over man me even "
             "most made after way many before must through back years where much your well down should because each "
             "just those people how too little state very make world still own see men work long get here between "
             "both life being under never day same another know while last might us great old year off come since "
             "against go came right used take three picture photo image quality color light sharp blur noise detail "
             "scene object person face sky tree water building street natural artificial generated render style art "
             "painting").split()
    lines = [" ".join(words[i:i + 12]) + "." for i in range(0, len(words), 12)]
    for i in range(40):
        lines += [f"USER: {q}\n<|image|> ASSISTANT:" for q in QUESTIONS.values()]
        lines += ["USER: How would you rate the quality of this image?\n<|image|>\nASSISTANT: The quality of the "
                  "image is"]
        lines += [f"The quality of the image is {w}." for w in LEVELS]
        lines += [f"This picture looks {w} and the {LEVELS[(i + j) % 5]} colors are {w}" for j, w in enumerate(LEVELS)]
    lines = [part for line in lines for part in line.split("\n")]  # "\n" unseen: byte fallback <0x0A>, as LLaMA
    corpus = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=corpus, model_type="bpe", vocab_size=400, character_coverage=1.0,
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
        split_digits=True, allow_whitespace_only_pieces=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1,
        minloglevel=2)
    (folder / "tokenizer.model").write_bytes(corpus.getvalue())
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    for w in LEVELS:  # one piece each; with the LLaMA normaliser " excellent" is ["▁", "▁excellent"] (as in LLaMA)
        assert sp.encode(w, out_type=str) == ["▁" + w] and sp.encode(" " + w, out_type=str)[-1:] == ["▁" + w], w
        assert sp.encode(f"It is {w}.", out_type=str)[-2:] == ["▁" + w, "."], w
    assert [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"] and sp.pad_id() == -1
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", **special, "pad_token": None, "add_bos_token": True,
        "add_eos_token": False, "clean_up_tokenization_spaces": False, "model_max_length": 2048}, indent=2) + "\n")
    return sp.get_piece_size()


def preprocessor_config(size):
    return {"crop_size": size, "do_center_crop": True, "do_normalize": True, "do_resize": True,
            "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
            "resample": 3, "size": size}


def owl_config(vocab, small=False):
    from mplug_owl2.model import MPLUGOwl2Config
    lm = dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8,
              num_key_value_heads=8) if small else dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                                         num_attention_heads=4, num_key_value_heads=4)
    vision = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4, image_size=224,
                  patch_size=14) if small else dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                    num_attention_heads=4, image_size=56, patch_size=14)
    abstractor = dict(hidden_size=256, encoder_hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=704, num_learnable_queries=64, grid_size=16) if small else dict(
        hidden_size=32, encoder_hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        num_learnable_queries=8, grid_size=4)
    return MPLUGOwl2Config(
        **lm, vocab_size=vocab, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0, hidden_act="silu",
        visual_config={"visual_model": {**vision, "layer_norm_eps": 1e-6, "hidden_act": "quick_gelu"},
                       "visual_abstractor": {**abstractor, "layer_norm_eps": 1e-6}})


def build_model(config):
    from mplug_owl2.model import MPLUGOwl2LlamaForCausalLM
    return randomize(MPLUGOwl2LlamaForCausalLM(config))


def save(model, folder, size, **kwargs):
    """Official save_pretrained, plus the tokenizer files of the fixture and a CLIP preprocessor_config.json."""
    model.save_pretrained(folder, **kwargs)
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(FIX / name, folder / name)
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(size), indent=2) + "\n")


def load_fp32(folder):
    """builder.load_pretrained_model's call for "mplug_owl2" with device="cpu", except torch_dtype (fp16 there)."""
    from mplug_owl2.model import MPLUGOwl2LlamaForCausalLM
    model, info = MPLUGOwl2LlamaForCausalLM.from_pretrained(
        folder, low_cpu_mem_usage=True, device_map={"": "cpu"}, ignore_mismatched_sizes=False,
        torch_dtype=torch.float32, output_loading_info=True)
    assert not any(info.values()), info
    return model.eval()


def make_images(folder, sizes, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (w, h) in enumerate(sizes):
        y, x = np.mgrid[0:h, 0:w] / np.array([max(h - 1, 1), max(w - 1, 1)])[:, None, None]
        smooth = np.stack([x, y, 1 - (x + y) / 2], -1) * 200 + 20
        noise = rng.integers(-40, 41, size=(h, w, 3))
        Image.fromarray(np.clip(smooth + noise, 0, 255).astype(np.uint8), "RGB").save(folder / f"img{i}.png")
        paths.append(folder / f"img{i}.png")
    return paths


def prompt_for(question):
    """getFeature.py: conv_templates["mplug_owl2"], user message question + "\\n" + DEFAULT_IMAGE_TOKEN, then None."""
    from mplug_owl2.constants import DEFAULT_IMAGE_TOKEN
    from mplug_owl2.conversation import conv_templates
    conv = conv_templates["mplug_owl2"].copy()
    conv.append_message(conv.roles[0], question + "\n" + DEFAULT_IMAGE_TOKEN)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def get_feature_batch(model, input_ids, image_tensors, both=True):
    """The body of getFeature.py's batch (fp32 on CPU instead of .half() on cuda)."""
    with torch.inference_mode():
        logits = model(input_ids.repeat(len(image_tensors), 1), images=torch.cat(image_tensors, 0))["logits"] \
            if both else None
        out = model(input_ids.repeat(len(image_tensors), 1), images=torch.cat(image_tensors, 0),
                    output_hidden_states=True)
    return logits, out


def fixture(out):
    from mplug_owl2.constants import IMAGE_TOKEN_INDEX
    from mplug_owl2.mm_utils import tokenizer_image_token
    from mplug_owl2.model.builder import load_pretrained_model
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    FIX.mkdir(parents=True, exist_ok=True)
    vocab = train_tokenizer(FIX)
    (FIX / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(56), indent=2) + "\n")
    model = build_model(owl_config(vocab))
    save(model, out / "checkpoint", 56, max_shard_size="200KB")
    save(model, out / "checkpoint_safetensors", 56, safe_serialization=True)
    shutil.copy(out / "checkpoint" / "config.json", FIX / "config.json")

    g = cut("ma_agiqa", "getFeature.py", ["disable_torch_init", "load_image", "expand2square"],
            {"Image": Image, "BytesIO": io.BytesIO, "requests": None})
    g["disable_torch_init"]()
    assert all(q in git("ma_agiqa", "show", "HEAD:getFeature.py").decode() for q in QUESTIONS.values())
    # the builder's tokenizer and image processor; its model is fp16 (hard-coded), the fp32 one is loaded alike
    tokenizer, _, image_processor, context_len = load_pretrained_model(str(out / "checkpoint"), None, "mplug_owl2",
                                                                       device="cpu")
    model_back = load_fp32(out / "checkpoint")
    ref = model.state_dict()
    back = model_back.state_dict()
    assert back.keys() == ref.keys() and all(torch.equal(v, ref[k]) for k, v in back.items())
    back = load_fp32(out / "checkpoint_safetensors").state_dict()
    assert back.keys() == ref.keys() and all(torch.equal(v, ref[k]) for k, v in back.items())
    model = model_back
    legacy_free = AutoTokenizer.from_pretrained(str(out / "checkpoint"), use_fast=False, legacy=False)
    print(type(tokenizer).__name__, "legacy:", tokenizer.legacy, "context_len:", context_len)

    paths = make_images(out / "images", IMAGE_SIZES)
    shutil.copytree(out / "images", FIX / "images", dirs_exist_ok=True)
    background = tuple(int(x * 255) for x in image_processor.image_mean)
    image_tensors = [image_processor.preprocess(g["expand2square"](g["load_image"](str(p)), background),
                                                return_tensors="pt")["pixel_values"] for p in paths]
    tensors = {"pixel_values": torch.cat(image_tensors, 0)}
    meta = {"prompts": {}, "tokens": {}, "expand2square_background": background}
    for q, question in QUESTIONS.items():
        prompt = prompt_for(question)
        input_ids = tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt").unsqueeze(0)
        assert torch.equal(input_ids, tokenizer_image_token(prompt, legacy_free, IMAGE_TOKEN_INDEX, "pt")[None])
        logits, out_h = get_feature_batch(model, input_ids, image_tensors)
        assert torch.equal(logits, out_h["logits"])
        hidden = out_h["hidden_states"][-1]
        tensors.update({f"input_ids.{q}": input_ids[0], f"hidden_last.{q}": hidden,
                        f"features.{q}": torch.mean(hidden, dim=1, keepdim=True)[:, 0],
                        f"logits_last.{q}": logits[:, -1]})
        meta["prompts"][q] = prompt
        meta["tokens"][q] = pieces(tokenizer, input_ids[0])

    tensors.update(qalign(tokenizer, model, image_processor, g, paths, meta))
    assert torch.equal(tensors.pop("qalign.pixel_values"), tensors["pixel_values"])
    meta["norm_eps"] = {re.sub(r"\.\d+\.", ".N.", n): getattr(m, "eps", getattr(m, "variance_epsilon", None))
                        for n, m in model.named_modules() if "Norm" in type(m).__name__}
    meta["versions"] = versions()
    meta["shapes"] = {k: list(v.shape) for k, v in sorted(tensors.items())}
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    for folder in (out, FIX):
        save_file(tensors, str(folder / "official_outputs.safetensors"))
        (folder / "official_outputs.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps({k: meta[k] for k in ("prompts", "shapes")}, indent=1))
    print("qalign.score", tensors["qalign.score"].tolist())


def pieces(tokenizer, ids):
    return [tokenizer.convert_ids_to_tokens(int(i)) if i >= 0 else "<IMAGE>" for i in ids]


def qalign(tokenizer, model, image_processor, g, paths, meta):
    """QAlignScorer of Q-Align's q_align/evaluate/scorer.py, its load_pretrained_model handing it this model."""
    from mplug_owl2.constants import IMAGE_TOKEN_INDEX
    from mplug_owl2.mm_utils import tokenizer_image_token
    prompt = "USER: How would you rate the quality of this image?\n<|image|>\nASSISTANT: The quality of the image is"
    assert prompt.replace("\n", "\\n") in git("q_align", "show", "HEAD:q_align/evaluate/scorer.py").decode()
    qa = cut("q_align", "q_align/evaluate/scorer.py", ["QAlignScorer"], {
        "nn": torch.nn, "torch": torch, "Image": Image, "List": list, "IMAGE_TOKEN_INDEX": IMAGE_TOKEN_INDEX,
        "tokenizer_image_token": tokenizer_image_token,
        "load_pretrained_model": lambda *a, **k: (tokenizer, model, image_processor, 2048)})
    half, torch.Tensor.half = torch.Tensor.half, lambda self, *a, **k: self  # fp32 on CPU instead of fp16
    try:
        scorer = qa["QAlignScorer"](pretrained="unused", device="cpu")
        images = [g["load_image"](str(p)) for p in paths]
        score = scorer(images)
    finally:
        torch.Tensor.half = half
    background = tuple(int(x * 255) for x in image_processor.image_mean)
    pixels = image_processor.preprocess([scorer.expand2square(i, background) for i in images],
                                        return_tensors="pt")["pixel_values"]  # batched, as in scorer.forward
    with torch.inference_mode():
        level_logits = model(scorer.input_ids.repeat(len(images), 1), images=pixels)["logits"][:, -1,
                                                                                              scorer.preferential_ids_]
    assert torch.allclose(torch.softmax(level_logits, -1) @ scorer.weight_tensor, score, atol=0, rtol=1e-6)
    assert torch.equal(scorer.input_ids[0], tokenizer_image_token(prompt, tokenizer, return_tensors="pt"))
    meta["prompts"]["qalign"] = prompt
    meta["tokens"]["qalign"] = pieces(tokenizer, scorer.input_ids[0])
    meta["tokens"]["qalign.levels"] = tokenizer.convert_ids_to_tokens(scorer.preferential_ids_)
    return {"qalign.input_ids": scorer.input_ids[0], "qalign.level_ids": torch.tensor(scorer.preferential_ids_),
            "qalign.level_logits": level_logits, "qalign.score": score, "qalign.pixel_values": pixels}


def versions():
    import accelerate
    import safetensors
    import sentencepiece
    import tokenizers
    import transformers
    import PIL
    return {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "sentencepiece": sentencepiece.__version__,
            "safetensors": safetensors.__version__, "accelerate": accelerate.__version__, "numpy": np.__version__,
            "pillow": PIL.__version__,
            "mirrors": {k: git(k, "rev-parse", "HEAD").decode().strip() for k in MIRRORS}}


def bench(out, small_dir, n_images=16, repeats=3):
    from mplug_owl2.constants import IMAGE_TOKEN_INDEX
    from mplug_owl2.mm_utils import tokenizer_image_token
    from transformers import AutoTokenizer, CLIPImageProcessor
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(2)
    small_dir = Path(small_dir)
    small_dir.mkdir(parents=True, exist_ok=True)
    save(build_model(owl_config(32000, small=True)), small_dir, 224, safe_serialization=True)
    model = load_fp32(small_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(small_dir), use_fast=False)
    image_processor = CLIPImageProcessor.from_pretrained(str(small_dir))
    g = cut("ma_agiqa", "getFeature.py", ["load_image", "expand2square"],
            {"Image": Image, "BytesIO": io.BytesIO, "requests": None})
    paths = make_images(out / "bench_images", [(512, 512), (512, 384), (384, 512), (640, 480)] * (n_images // 4))
    background = tuple(int(x * 255) for x in image_processor.image_mean)
    ids = {q: tokenizer_image_token(prompt_for(t), tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt").unsqueeze(0)
           for q, t in QUESTIONS.items()}

    def loop(both):  # getFeature.py's loop for both questions: load, pad, preprocess, batch of 8, save each feature
        for q, input_ids in ids.items():
            image_tensors = []
            for i, p in enumerate(paths):
                image = g["expand2square"](g["load_image"](str(p)), background)
                image_tensors.append(image_processor.preprocess(image, return_tensors="pt")["pixel_values"])
                if i % 8 == 7 or i == len(paths) - 1:
                    _, o = get_feature_batch(model, input_ids, image_tensors, both=both)
                    feats = torch.mean(o["hidden_states"][-1], dim=1, keepdim=True)
                    for j in range(len(image_tensors)):
                        torch.save(feats[j], out / "bench_feature.pt")
                    image_tensors = []

    cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    n_visual = model.config.visual_config["visual_abstractor"]["num_learnable_queries"] + 1  # queries + vit_eos
    result = {"machine": cpu, "threads": torch.get_num_threads(), "n_images": n_images, "batch": 8,
              "dtype": "float32", "seq_len": {q: int(v.shape[1]) - 1 + n_visual for q, v in ids.items()}}
    for name, both in (("released_2q_x_2fwd", True), ("hidden_only_2q_x_1fwd", False)):
        loop(both)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            loop(both)
            times.append(time.perf_counter() - t0)
        result[name] = {"best_s": min(times), "all_s": times, "images_per_s": n_images / min(times)}
    pixel = image_processor.preprocess(Image.new("RGB", (224, 224)), return_tensors="pt")["pixel_values"]
    result["gflop_per_image_per_forward"] = {}
    for q, input_ids in ids.items():
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            model(input_ids, images=pixel, output_hidden_states=True)
        result["gflop_per_image_per_forward"][q] = counter.get_total_flops() / 1e9
    gf = result["gflop_per_image_per_forward"]
    result["gflop_per_image_released"] = 2 * sum(gf.values())
    result["gflop_per_image_hidden_only"] = sum(gf.values())
    result["params_M"] = sum(p.numel() for p in model.parameters()) / 1e6
    result["versions"] = versions()
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=1))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--bench", metavar="SMALL_DIR", help="time getFeature.py's loop on a small random model")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    official = args.out / "official"  # the released package, extracted from the mirror
    shutil.rmtree(official, ignore_errors=True)
    official.mkdir()
    subprocess.run(f"git -C {MIRRORS['owl']} archive HEAD mPLUG-Owl2/mplug_owl2 | tar -x -C {official} "
                   "--strip-components=1", shell=True, check=True)
    sys.path.insert(0, str(official))
    import transformers
    print("torch", torch.__version__, "transformers", transformers.__version__, transformers.__file__)
    assert transformers.__version__ == "4.31.0", "put /tmp/owl_parity/site first on PYTHONPATH"
    import mplug_owl2
    assert Path(mplug_owl2.__file__).is_relative_to(official), mplug_owl2.__file__
    bench(args.out, args.bench) if args.bench else fixture(args.out)


if __name__ == "__main__":
    main()
