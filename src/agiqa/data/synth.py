"""Synthetic AGIQA data with a known quality function, written in the AGIQA-3K layout.

Each image draws `count` shapes of one colour on a flat / gradient / striped background for a prompt such as
"three red circles, striped style", then applies degradations of random strength in [0.2, 1] (0 = absent):
over-smoothing (median filter), gaussian blur, colour banding + grain, gaussian noise and JPEG compression, in that
order. With probability `mismatch_rate` the drawn count, colour or shape differs from the prompt. MOS values
come from `synthetic_quality` / `synthetic_alignment` plus gaussian rater noise (see docs/data.md).
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "square", "triangle", "star")
COLOURS = {
    "red": (215, 35, 35),
    "green": (30, 160, 60),
    "blue": (35, 75, 215),
    "yellow": (235, 205, 30),
    "purple": (135, 55, 175),
    "orange": (240, 135, 25),
}
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
STYLES = ("flat", "gradient", "striped")
DEGRADATIONS = ("smooth", "blur", "banding", "noise", "jpeg")
MISMATCH_KINDS = ("count", "colour", "shape")

# Probability that each degradation is present, per fake generator; unlisted degradations use BASE_RATE.
BASE_RATE = 0.15
GENERATORS = {
    "synthA": {},
    "synthB": {"blur": 0.8},
    "synthC": {"noise": 0.8},
    "synthD": {"jpeg": 0.7, "banding": 0.6},
    "synthE": {"smooth": 0.8, "blur": 0.3},
}

# true_quality = Q_MIN + Q_SPAN * exp(-(sum_d QUALITY_WEIGHTS[d] * strength_d + MISMATCH_WEIGHT * mismatched))
Q_MIN, Q_SPAN = 0.3, 4.5
QUALITY_WEIGHTS = {"smooth": 0.7, "blur": 1.1, "banding": 0.8, "noise": 1.2, "jpeg": 0.9}
MISMATCH_WEIGHT = 0.25
# true_alignment = ALIGN_BASE[mismatch] - ALIGN_BLUR * blur - ALIGN_NOISE * noise
ALIGN_BASE = {"none": 4.5, "count": 2.8, "colour": 1.8, "shape": 1.2}
ALIGN_BLUR, ALIGN_NOISE = 0.5, 0.3
LIGHT_RANGE = (0.3, 0.5)  # lighting ramp: relative brightness change across the image (see _light)
N_RATERS = 20
SCORE_RANGE = (0.0, 5.0)
META_FILE = "synth_meta.csv"


def synthetic_quality(params) -> float | np.ndarray:
    """Noise-free quality in [0.3, 4.8] from the degradation strengths and `mismatched` (0/1) of `params`.

    `params` is any mapping (dict, DataFrame row or DataFrame) with keys DEGRADATIONS and "mismatched".
    """
    damage = sum(w * np.asarray(params[d], dtype=np.float64) for d, w in QUALITY_WEIGHTS.items())
    damage = damage + MISMATCH_WEIGHT * np.asarray(params["mismatched"], dtype=np.float64)
    return _scalar_or_array(Q_MIN + Q_SPAN * np.exp(-damage))


def synthetic_alignment(params) -> float | np.ndarray:
    """Noise-free prompt alignment in [0.4, 4.5] from `mismatch` ("none", "count", "colour", "shape"), blur, noise."""
    base = np.vectorize(ALIGN_BASE.__getitem__, otypes=[np.float64])(np.asarray(params["mismatch"]))
    blur = np.asarray(params["blur"], dtype=np.float64)
    noise = np.asarray(params["noise"], dtype=np.float64)
    return _scalar_or_array(base - ALIGN_BLUR * blur - ALIGN_NOISE * noise)


def _scalar_or_array(values: np.ndarray) -> float | np.ndarray:
    return float(values) if np.ndim(values) == 0 else values


def prompt_text(count: int, colour: str, shape: str, style: str) -> str:
    """E.g. "three red circles, striped style"."""
    noun = shape if count == 1 else shape + "s"
    return f"{COUNT_WORDS[count]} {colour} {noun}, {style} style"


def prompt_vocabulary() -> list[str]:
    """Every WordPiece token the prompts use, after BERT's special tokens: a tokenizer for models trained on this
    data without a downloaded vocabulary (`tokenizer="synth"` of the tiny MoE-AGIQA)."""
    words = [*COUNT_WORDS.values(), *COLOURS, *SHAPES, "##s", ",", *STYLES, "style"]
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]


def _sample_params(n: int, seed: int, mismatch_rate: float) -> pd.DataFrame:
    """One row per image: prompt attributes, what is drawn, mismatch kind, degradation strengths."""
    rng = np.random.default_rng(seed)
    gens = list(GENERATORS)
    # Every prompt is rendered once by each generator, as in AGIQA-3K.
    n_prompts = math.ceil(n / len(gens))
    prompts = [
        (int(rng.integers(1, 5)), str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES)), str(rng.choice(STYLES)))
        for _ in range(n_prompts)
    ]
    rows = []
    for i in range(n):
        gen = gens[i % len(gens)]
        count, colour, shape, style = prompts[i // len(gens)]
        drawn = {"count": count, "colour": colour, "shape": shape}
        mismatch = str(rng.choice(MISMATCH_KINDS)) if rng.random() < mismatch_rate else "none"
        if mismatch != "none":
            options = {"count": list(COUNT_WORDS), "colour": list(COLOURS), "shape": list(SHAPES)}[mismatch]
            drawn[mismatch] = rng.choice([o for o in options if o != drawn[mismatch]]).item()
        rates = GENERATORS[gen]
        strengths = {
            d: float(rng.uniform(0.2, 1.0)) if rng.random() < rates.get(d, BASE_RATE) else 0.0 for d in DEGRADATIONS
        }
        rows.append(
            {
                "name": f"{gen}_{i:04d}.png",
                "generator": gen,
                "prompt": prompt_text(count, colour, shape, style),
                "count": count,
                "colour": colour,
                "shape": shape,
                "style": style,
                "drawn_count": drawn["count"],
                "drawn_colour": drawn["colour"],
                "drawn_shape": drawn["shape"],
                "mismatch": mismatch,
                "mismatched": int(mismatch != "none"),
                **strengths,
            }
        )
    return pd.DataFrame(rows)


def _background(style: str, size: int, rng: np.random.Generator) -> np.ndarray:
    c1, c2 = rng.integers(150, 250, size=(2, 3))
    if style == "flat":
        return np.broadcast_to(c1, (size, size, 3)).astype(np.float64)
    if style == "gradient":
        t = np.linspace(0, 1, size)[:, None, None]
        return np.broadcast_to(c1 * (1 - t) + c2 * t, (size, size, 3)).astype(np.float64)
    yy, xx = np.mgrid[:size, :size]
    stripes = ((xx + yy) // max(2, size // 16)) % 2 == 0
    return np.where(stripes[..., None], c1, c2).astype(np.float64)


def _shape_polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "star":
        radii = [r if k % 2 == 0 else 0.45 * r for k in range(10)]
        angles = [angle + k * math.pi / 5 for k in range(10)]
    else:
        corners = {"square": 4, "triangle": 3}[shape]
        radii = [r] * corners
        angles = [angle + k * 2 * math.pi / corners for k in range(corners)]
    return [(cx + q * math.cos(a), cy + q * math.sin(a)) for q, a in zip(radii, angles)]


def _render(row: pd.Series, size: int, rng: np.random.Generator) -> Image.Image:
    """Clean image of `row`'s drawn attributes, drawn at 2x and downsampled for anti-aliased edges."""
    big = 2 * size
    canvas = Image.fromarray(np.repeat(np.repeat(_background(row["style"], size, rng), 2, 0), 2, 1).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    cell = big / 2
    for slot in rng.permutation(4)[: row["drawn_count"]]:
        cx = (slot % 2 + 0.5) * cell + rng.uniform(-0.1, 0.1) * cell
        cy = (slot // 2 + 0.5) * cell + rng.uniform(-0.1, 0.1) * cell
        r = rng.uniform(0.28, 0.38) * cell
        fill = COLOURS[row["drawn_colour"]]
        outline = (25, 25, 25)
        if row["drawn_shape"] == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=outline, width=2)
        else:
            angle = -math.pi / 2 + (math.pi / 4 if row["drawn_shape"] == "square" else 0)
            draw.polygon(_shape_polygon(row["drawn_shape"], cx, cy, r, angle), fill=fill, outline=outline, width=2)
    return _light(canvas, rng).resize((size, size), Image.Resampling.LANCZOS)


def _light(canvas: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Multiply by a linear lighting ramp in a random direction (the gain changes by a fraction drawn from
    LIGHT_RANGE along an axis-parallel ramp, up to √2 times that along a diagonal one): every image then has smooth
    tones, like real photos and renders, so colour banding shows as visible steps instead of an invisible shift of
    flat colours."""
    arr = np.asarray(canvas, dtype=np.float64)
    h, w = arr.shape[:2]
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[:h, :w]
    ramp = (xx / (w - 1) - 0.5) * math.cos(angle) + (yy / (h - 1) - 0.5) * math.sin(angle)
    gain = 1 + rng.uniform(*LIGHT_RANGE) * ramp
    return Image.fromarray(np.clip(np.round(arr * gain[..., None]), 0, 255).astype(np.uint8))


def _degrade(img: Image.Image, row: pd.Series, rng: np.random.Generator) -> Image.Image:
    if row["smooth"] > 0:
        img = img.filter(ImageFilter.MedianFilter(2 * math.ceil(3 * row["smooth"]) + 1))
    if row["blur"] > 0:
        img = img.filter(ImageFilter.GaussianBlur(2.5 * row["blur"]))
    arr = np.asarray(img, dtype=np.float64)
    if row["banding"] > 0:
        levels = round(16 - 13 * row["banding"])
        step = 255 / (levels - 1)
        arr = np.round(arr / step) * step + rng.normal(0, 2 + 4 * row["banding"], arr.shape)
    if row["noise"] > 0:
        arr = arr + rng.normal(0, 4 + 36 * row["noise"], arr.shape)
    img = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8))
    if row["jpeg"] > 0:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=round(60 - 52 * row["jpeg"]))
        img = Image.open(buf).convert("RGB")
    return img


def _ratings(true: np.ndarray, rater_noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """MOS and rater std from N_RATERS gaussian ratings per image, clipped to the 0-5 scale."""
    ratings = np.clip(true[:, None] + rng.normal(0, rater_noise, (true.size, N_RATERS)), *SCORE_RANGE)
    return ratings.mean(axis=1), ratings.std(axis=1, ddof=1)


def generate_synthetic(
    out_dir: str | os.PathLike,
    n: int = 300,
    seed: int = 0,
    image_size: int = 64,
    mismatch_rate: float = 0.3,
    rater_noise: float = 0.8,
) -> pd.DataFrame:
    """Write n images + data.csv (AGIQA-3K columns) + synth_meta.csv into `out_dir`; return the meta table.

    Deterministic per seed: the same arguments give byte-identical files. `rater_noise` is the std of one
    simulated rater (MOS averages N_RATERS of them, so its noise std is about rater_noise / sqrt(20)).
    """
    if n < 1 or image_size < 16 or not 0 <= mismatch_rate <= 1 or rater_noise < 0:
        raise ValueError(
            f"need n >= 1, image_size >= 16, 0 <= mismatch_rate <= 1, rater_noise >= 0; got n={n}, "
            f"image_size={image_size}, mismatch_rate={mismatch_rate}, rater_noise={rater_noise}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = _sample_params(n, seed, mismatch_rate)
    for i, row in meta.iterrows():
        rng = np.random.default_rng([seed, i])
        _degrade(_render(row, image_size, rng), row, rng).save(out / row["name"], format="PNG")
    meta["true_quality"] = synthetic_quality(meta)
    meta["true_alignment"] = synthetic_alignment(meta)
    rating_rng = np.random.default_rng([seed, n, 1])
    mos_quality, std_quality = _ratings(meta["true_quality"].to_numpy(), rater_noise, rating_rng)
    mos_align, std_align = _ratings(meta["true_alignment"].to_numpy(), rater_noise, rating_rng)
    labels = pd.DataFrame(
        {
            "name": meta["name"],
            "prompt": meta["prompt"],
            "adj1": meta["colour"],
            "adj2": meta["count"].map(COUNT_WORDS),
            "style": meta["style"],
            "mos_quality": mos_quality,
            "std_quality": std_quality,
            "mos_align": mos_align,
            "std_align": std_align,
        }
    )
    # CRLF like the real AGIQA-3K data.csv, so readers are exercised on the same line endings.
    labels.to_csv(out / "data.csv", index=False, float_format="%.6f", lineterminator="\r\n")
    meta.to_csv(out / META_FILE, index=False, float_format="%.6f")
    return meta
