"""Official side of the MoE-AGIQA parity check (see README.md). Run with the OLD timm / transformers / ImageReward:

    PYTHONPATH=/tmp/moe_parity/site /work/main/.venv/bin/python official_side.py MIRROR_REPO_DIR [OUT_DIR]

Builds the official modules with random weights (no downloads), runs the forward of ``eval_epoch`` of
``train_3k_v2.py`` (and ``train_3k_v1.py``) and writes the official file layouts, the inputs and the scores to OUT_DIR.
The official classes are not copied here: their source is cut out of the mirror's scripts at run time.
"""
import ast
import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import torch

MIRROR, OUT = None, Path("/tmp/moe_parity")  # set by main() (or by bench_official.py) before anything runs
B, K, T = 2, 3, 35
WANTED = {"exists", "default", "get_vit_feature", "SaveOutput", "CrossAttention", "Projection", "IQARegression"}
ALLOWED_IMPORTS = {"torch", "torch.nn", "torch.nn.functional", "einops", "inspect"}


def official_defs(script: str):
    """Cut the imports and the needed top-level definitions out of an official script; write and import them."""
    src = subprocess.run(["git", "-C", str(MIRROR), "show", f"HEAD:{script}"], check=True, capture_output=True,
                         text=True).stdout
    keep = []
    for node in ast.parse(src).body:
        if isinstance(node, ast.Import) and all(a.name in ALLOWED_IMPORTS for a in node.names):
            keep.append(node)
        elif isinstance(node, ast.ImportFrom) and node.module in ALLOWED_IMPORTS | {"torch"}:
            keep.append(node)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in WANTED:
            keep.append(node)
    path = OUT / f"official_defs_{Path(script).stem}.py"
    path.write_text("\n\n".join(ast.get_source_segment(src, n) for n in keep) + "\n")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def imagereward_class():
    """ImageReward's model class without running the package __init__ (it imports clip, diffusers, accelerate...)."""
    site = Path(importlib.util.find_spec("timm").origin).parents[1]  # the --target folder holding image-reward
    for name, sub in (("ImageReward", ""), ("ImageReward.models", "models")):
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(site / "ImageReward" / sub)]
        sys.modules[name] = pkg
    # vit.py imports fairscale's checkpoint_wrapper (only used with gradient checkpointing): stub it
    for name in ("fairscale", "fairscale.nn", "fairscale.nn.checkpoint",
                 "fairscale.nn.checkpoint.checkpoint_activations"):
        sys.modules[name] = types.ModuleType(name)
    sys.modules["fairscale.nn.checkpoint.checkpoint_activations"].checkpoint_wrapper = lambda m, *a, **k: m
    from ImageReward.models.BLIP import blip_pretrain
    from transformers import BertTokenizer

    def init_tokenizer():  # BLIP's init_tokenizer without the bert-base-uncased download: a local toy vocabulary
        tokenizer = BertTokenizer(str(OUT / "tokenizer" / "vocab.txt"))
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
        tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
        tokenizer.enc_token_id = tokenizer.additional_special_tokens_ids[0]
        return tokenizer

    blip_pretrain.init_tokenizer = init_tokenizer
    from ImageReward.ImageReward import ImageReward
    return ImageReward


def randomize(*modules, seed):
    """Every parameter perturbed by N(0, 0.02) (biases, cls/pos tokens and LayerNorm gains become non-trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in modules:
            for name, p in m.named_parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=g))
                if name in ("weight1", "weight2"):  # zeros as released: make the prior branch matter
                    p.copy_(0.5 * torch.randn(p.shape, generator=g))


@torch.no_grad()
def official_eval(vit, vit_prior, reward, regressor, save_output, get_vit_feature, inp):
    """The body of Train.eval_epoch (train_3k_v{1,2}.py) for one batch, plus the intermediates for diagnosis."""
    for m in (vit, vit_prior, reward, regressor):
        if m is not None:
            m.eval()
    pooled = []
    hook = regressor.pool.register_forward_hook(lambda m, i, o: pooled.append(o.flatten(1)))
    image_embeds = reward.blip.visual_encoder(inp["prompt_image"])
    image_atts = torch.ones(image_embeds.size()[:-1], dtype=torch.long)
    text_output = reward.blip.text_encoder(inp["input_ids"], attention_mask=inp["attention_mask"],
                                           encoder_hidden_states=image_embeds, encoder_attention_mask=image_atts,
                                           return_dict=True)
    text_features = text_output.last_hidden_state
    pred, priors, degradations, per_crop = 0, [], [], []
    for i in range(K):
        d_img_org = inp["crops"][:, i]
        _ = vit(d_img_org)
        vit_dis = get_vit_feature(save_output)
        save_output.outputs.clear()
        b, n, c = vit_dis.shape
        f_dis = vit_dis.transpose(1, 2).view(b, c, 14, 14)
        if vit_prior is not None:
            vit_prior_cls = vit_prior.forward_features(d_img_org)[:, 0, :]
            out = regressor(f_dis, text_features, vit_prior_cls)
            priors.append(vit_prior_cls)
        else:
            out = regressor(f_dis, text_features)
        pred += out
        per_crop.append(out.squeeze(-1))
        degradations.append(f_dis)
    pred /= K
    hook.remove()
    pooled = torch.stack(pooled, 1)  # (B, K, 512)
    experts = torch.stack([torch.stack([e.project(pooled[:, k]).squeeze(-1) for e in regressor.proj_experts], -1)
                           for k in range(K)], 1)  # (B, K, 4): every expert's output
    return {"scores": pred.squeeze(-1), "per_crop": torch.stack(per_crop, 1), "text": text_features,
            "image_embeds": image_embeds, "prior": torch.stack(priors, 1) if priors else None,
            "degradation": torch.stack(degradations, 1), "pooled": pooled, "experts": experts,
            "gates": regressor.gating_network(pooled.flatten(0, 1)).unflatten(0, (B, K))}


def official_save(reward, regressor, path):
    """save_model of train_3k_v2.py: the same keys and value types ('loss' is np.mean(...) -> numpy.float64)."""
    optimizer = torch.optim.Adam([{"params": reward.parameters()}, {"params": regressor.parameters()}], lr=1e-5,
                                 weight_decay=1e-5)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=50, eta_min=0)
    torch.save({"epoch": 0, "reward_model_state_dict": reward.state_dict(),
                "regressor_model_state_dict": regressor.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
                "scheduler_state_dict": scheduler.state_dict(), "loss": np.mean([0.1, 0.2])}, path)


def build_official():
    """Both official regressors, the two timm ViTs (hooks on the degradation ViT's blocks), the prior head and
    ImageReward, with the parity weights (seeded: the same weights on every run). Needs the old stack."""
    import timm
    import transformers
    from timm.models.vision_transformer import Block

    print("torch", torch.__version__, "timm", timm.__version__, timm.__file__, "transformers",
          transformers.__version__, transformers.__file__)
    assert timm.__version__ == "0.6.13" and transformers.__version__ == "4.30.2", "put the old site first on sys.path"
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # the two `torch.tensor([]).cuda()` in IQARegression
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "tokenizer").mkdir(exist_ok=True)
    (OUT / "tokenizer" / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + "a photo of cat dog red blue sky".split()) + "\n")
    med_config = OUT / "med_config.json"  # BLIP's configs/med_config.json (ImageReward downloads it from the hub)
    med_config.write_text(json.dumps({
        "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
        "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert", "num_attention_heads": 12,
        "num_hidden_layers": 12, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": 30524, "encoder_width": 768,
        "add_cross_attention": True}, indent=2))
    v2, v1 = official_defs("train_3k_v2.py"), official_defs("train_3k_v1.py")

    torch.manual_seed(0)
    vit = timm.create_model("vit_base_patch16_224", pretrained=False)
    vit_prior = timm.create_model("vit_base_patch16_224", pretrained=False)
    prior_head = torch.nn.Sequential(torch.nn.Linear(768, 768), torch.nn.GELU(), torch.nn.Linear(768, 1))
    reward = imagereward_class()(med_config=str(med_config), device="cpu")
    regressor2, regressor1 = v2.IQARegression(), v1.IQARegression()
    randomize(vit, vit_prior, prior_head, reward, regressor2, regressor1, seed=1)
    save_output = v2.SaveOutput()
    for layer in vit.modules():  # init_saveoutput
        if isinstance(layer, Block):
            layer.register_forward_hook(save_output)
    return types.SimpleNamespace(vit=vit, vit_prior=vit_prior, prior_head=prior_head, reward=reward,
                                 regressor2=regressor2, regressor1=regressor1, save_output=save_output, v2=v2, v1=v1,
                                 versions={"torch": torch.__version__, "timm": timm.__version__,
                                           "transformers": transformers.__version__})


def save_official_files(m, out: Path):
    """best.pth (v2, save_model of train_3k_v2.py), prior.pth (save_model of pretrain.py), degradation_vit.pth."""
    official_save(m.reward, m.regressor2, out / "best.pth")
    torch.save({"epoch": 0, "vit_model_state_dict": m.vit_prior.state_dict(),  # pretrain.py save_model
                "regressor_model_state_dict": m.prior_head.state_dict(), "loss": np.mean([0.1, 0.2])},
               out / "prior.pth")
    torch.save(m.vit.state_dict(), out / "degradation_vit.pth")


def main():
    global MIRROR, OUT
    MIRROR, OUT = Path(sys.argv[1]), Path(sys.argv[2] if len(sys.argv) > 2 else "/tmp/moe_parity")
    m = build_official()
    vit, vit_prior, reward, regressor2, regressor1, save_output, v2, v1 = (
        m.vit, m.vit_prior, m.reward, m.regressor2, m.regressor1, m.save_output, m.v2, m.v1)

    g = torch.Generator().manual_seed(2)
    mask = torch.zeros(B, T, dtype=torch.long)
    mask[0, :12], mask[1, :T] = 1, 1  # one padded prompt, one truncated to 35 tokens
    ids = torch.randint(1000, 30522, (B, T), generator=g) * mask
    ids[:, 0], ids[0, 11], ids[1, T - 1] = 101, 102, 102  # [CLS] ... [SEP] [PAD]...
    mean, std = torch.tensor([0.48145466, 0.4578275, 0.40821073]), torch.tensor([0.26862954, 0.26130258, 0.27577711])
    inp = {"crops": torch.rand(B, K, 3, 224, 224, generator=g),
           "prompt_image": (torch.rand(B, 3, 224, 224, generator=g) - mean[:, None, None]) / std[:, None, None],
           "input_ids": ids, "attention_mask": mask}

    out2 = official_eval(vit, vit_prior, reward, regressor2, save_output, v2.get_vit_feature, inp)
    out1 = official_eval(vit, None, reward, regressor1, save_output, v1.get_vit_feature, inp)
    print("official v2 scores", out2["scores"].tolist(), "\nofficial v1 scores", out1["scores"].tolist())

    save_official_files(m, OUT)
    official_save(reward, regressor1, OUT / "best_v1.pth")
    torch.save(inp, OUT / "inputs.pt")
    torch.save({"v2": out2, "v1": out1, "versions": m.versions}, OUT / "official_scores.pt")
    print("wrote", sorted(p.name for p in OUT.iterdir()))


if __name__ == "__main__":
    main()
