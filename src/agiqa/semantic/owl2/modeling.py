"""mPLUG-Owl2 (Ye et al., CVPR 2024) on current torch: vision encoder, visual abstractor, modality-adaptive LLaMA.

Our own implementation of the released architecture (X-PLUG/mPLUG-Owl, mPLUG-Owl2/mplug_owl2/model; Q-Align's
copy is the same network). Module names follow the released state dict, so a released checkpoint loads unchanged:

- `model.vision_model`: CLIP-style ViT (class token, bias-free patch conv, learned positions, pre- and post-LayerNorm;
  fused `query_key_value` laid out per head as [head][q|k|v][head_dim]; QuickGELU MLP).
- `model.visual_abstractor`: learned queries; per layer the queries (LayerNorm `norm1`) attend to themselves and the
  vision tokens (LayerNorm `normk`) with fixed sin-cos positions added to queries and keys, then a SwiGLU MLP with an
  inner LayerNorm; `visual_fc` to the LLM width and a learned end-of-image token `vit_eos`.
- `model.layers`: LLaMA decoder layers whose key/value projections and both RMSNorms are "multiway": one set of
  weights for text tokens (`multiway.0`) and one for visual tokens (`multiway.1`); queries, output projection and MLP
  are shared.

Differences from the released forward, none of which changes a number beyond float rounding: attention runs through
`scaled_dot_product_attention` (causal, no mask tensor: batches are right-padded, and under causal attention a real
token never sees the padding after it), no KV cache, the decoder stops at the requested hidden layer, and the LM
head is applied only to the positions asked for.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from agiqa.semantic.owl2.configuration import AbstractorConfig, Owl2Config, VisionConfig

IMAGE_TOKEN_INDEX = -200
"""The id `tokenizer_image_token` puts where the prompt says `<|image|>` (replaced by the visual tokens)."""
TEXT, VISUAL = 0, 1


# --------------------------------------------------------------------------- vision encoder
class VisionEmbeddings(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        d = config.hidden_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.patch_embed = nn.Conv2d(3, d, kernel_size=config.patch_size, stride=config.patch_size, bias=False)
        self.position_embedding = nn.Parameter(torch.zeros(1, config.grid ** 2 + 1, d))
        self.pre_layernorm = nn.LayerNorm(d, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(pixel_values).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(patches.shape[0], -1, -1).to(patches.dtype), patches], dim=1)
        tokens = tokens + self.position_embedding[:, :tokens.shape[1]].to(patches.dtype)
        return self.pre_layernorm(tokens)


class VisionAttention(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.query_key_value = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        # The released fused projection is laid out per head: [head][q, k, v][head_dim].
        q, k, v = self.query_key_value(x).view(b, n, self.num_heads, 3, d // self.num_heads).permute(3, 0, 2, 1, 4)
        context = F.scaled_dot_product_attention(q, k, v)
        return self.dense(context.transpose(1, 2).reshape(b, n, d))


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class VisionMLP(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = QuickGELU()
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VisionLayer(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = VisionAttention(config)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = VisionMLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class VisionEncoder(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(VisionLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class VisionModel(nn.Module):
    """(B, 3, S, S) pixels -> (B, 1 + (S/patch)^2, hidden) tokens after the post-LayerNorm."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.embeddings = VisionEmbeddings(config)
        self.encoder = VisionEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.post_layernorm(self.encoder(self.embeddings(pixel_values)))


# --------------------------------------------------------------------------- visual abstractor
def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, dim) [sin | cos] embedding with frequencies 1 / 10000^(2i/dim) (float32, as MAE's)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float32) / (dim / 2))
    angles = positions.to(torch.float32)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """(1 + grid^2, dim): a zero row for the class token, then per row-major patch [column code | row code]."""
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    patches = torch.cat([sincos_1d(dim // 2, cols.flatten()), sincos_1d(dim // 2, rows.flatten())], dim=1)
    return torch.cat([torch.zeros(1, dim), patches])


class AbstractorAttention(nn.Module):
    """Multi-head attention of the queries over [queries, vision tokens] with fixed sin-cos positions."""

    def __init__(self, config: AbstractorConfig):
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(config.encoder_hidden_size, d)
        self.value = nn.Linear(config.encoder_hidden_size, d)
        self.register_buffer("q_pos_embed", sincos_1d(d, torch.arange(config.num_learnable_queries)))
        self.register_buffer("k_pos_embed", sincos_2d(d, config.grid_size))

    def forward(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        b, q_len, d = queries.shape
        positions = torch.cat([self.q_pos_embed, self.k_pos_embed]).to(keys.dtype)
        q = self._heads(self.query(queries + self.q_pos_embed.to(queries.dtype)))
        k = self._heads(self.key(keys + positions))
        v = self._heads(self.value(keys))
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, q_len, d)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)


class AbstractorMLP(nn.Module):
    """SwiGLU with a LayerNorm on the inner activations."""

    def __init__(self, config: AbstractorConfig):
        super().__init__()
        self.w1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.w2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.w3 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.ffn_ln = nn.LayerNorm(config.intermediate_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.ffn_ln(F.silu(self.w1(x)) * self.w3(x)))


class AbstractorOutput(nn.Module):
    def __init__(self, config: AbstractorConfig):
        super().__init__()
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.norm2 = nn.LayerNorm(config.hidden_size)  # torch's default eps, as released
        self.mlp = AbstractorMLP(config)

    def forward(self, context: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        x = residual + self.out_proj(context)
        return x + self.mlp(self.norm2(x))


class AbstractorCrossAttention(nn.Module):
    def __init__(self, config: AbstractorConfig):
        super().__init__()
        self.attention = AbstractorAttention(config)
        self.output = AbstractorOutput(config)
        self.norm1 = nn.LayerNorm(config.hidden_size)  # torch's default eps, as released
        self.normk = nn.LayerNorm(config.encoder_hidden_size)

    def forward(self, queries: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        queries = self.norm1(queries)  # the residual below is the normalised queries, as released
        keys = torch.cat([queries, self.normk(image_tokens)], dim=1)
        return self.output(self.attention(queries, keys), queries)


class AbstractorLayer(nn.Module):
    def __init__(self, config: AbstractorConfig):
        super().__init__()
        self.crossattention = AbstractorCrossAttention(config)

    def forward(self, queries: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        return self.crossattention(queries, image_tokens)


class AbstractorEncoder(nn.Module):
    def __init__(self, config: AbstractorConfig):
        super().__init__()
        self.layers = nn.ModuleList(AbstractorLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, queries: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            queries = layer(queries, image_tokens)
        return queries


class VisualAbstractor(nn.Module):
    """(B, N, vision width) vision tokens -> (B, queries + 1, LLM width) visual tokens for the decoder."""

    def __init__(self, config: AbstractorConfig, language_hidden_size: int):
        super().__init__()
        self.encoder = AbstractorEncoder(config)
        self.visual_fc = nn.Linear(config.hidden_size, language_hidden_size)
        self.query_embeds = nn.Parameter(torch.zeros(1, config.num_learnable_queries, config.hidden_size))
        self.vit_eos = nn.Parameter(torch.zeros(1, 1, language_hidden_size))

    def forward(self, image_tokens: torch.Tensor) -> torch.Tensor:
        b = image_tokens.shape[0]
        queries = self.encoder(self.query_embeds.expand(b, -1, -1).to(image_tokens.dtype), image_tokens)
        return torch.cat([self.visual_fc(queries), self.vit_eos.expand(b, -1, -1).to(image_tokens.dtype)], dim=1)


# --------------------------------------------------------------------------- modality-adaptive LLaMA
class Route:
    """Which flattened (row, position) tokens are text and which visual, computed once per forward for all layers."""

    def __init__(self, visual: torch.Tensor):
        flat = visual.reshape(-1)
        self.text = (~flat).nonzero().squeeze(1)
        self.visual = flat.nonzero().squeeze(1)


class Multiway(nn.Module):
    """Two copies of a module: `multiway.0` for text tokens, `multiway.1` for visual tokens."""

    def __init__(self, make):
        super().__init__()
        self.multiway = nn.ModuleList([make(), make()])

    def forward(self, x: torch.Tensor, route: Route) -> torch.Tensor:
        """x (B, L, D_in) -> (B, L, D_out); each token goes through its modality's copy only."""
        flat = x.reshape(-1, x.shape[-1])
        parts = [(index, way) for index, way in zip((route.text, route.visual), self.multiway) if index.numel()]
        if len(parts) == 1:
            return parts[0][1](x)
        outputs = [way(flat.index_select(0, index)) for index, way in parts]
        out = flat.new_empty(flat.shape[0], outputs[0].shape[-1])
        for (index, _), output in zip(parts, outputs):
            out.index_copy_(0, index, output)
        return out.view(*x.shape[:-1], -1)


def rotary_cos_sin(length: int, head_dim: int, theta: float, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """LLaMA rotary tables for positions 0..length-1, computed in float32 and cast to `dtype`: (length, head_dim)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
    table = torch.cat([angles, angles], dim=-1)
    return table.cos().to(dtype), table.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, config: Owl2Config):
        super().__init__()
        d, hd = config.hidden_size, config.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, hd
        bias = config.attention_bias
        self.q_proj = nn.Linear(d, self.num_heads * hd, bias=bias)
        self.k_proj = Multiway(lambda: nn.Linear(d, self.num_kv_heads * hd, bias=bias))
        self.v_proj = Multiway(lambda: nn.Linear(d, self.num_kv_heads * hd, bias=bias))
        self.o_proj = nn.Linear(self.num_heads * hd, d, bias=bias)

    def forward(self, x: torch.Tensor, route: Route, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x, route).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x, route).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if self.num_kv_heads != self.num_heads:
            k = k.repeat_interleave(self.num_heads // self.num_kv_heads, dim=1)
            v = v.repeat_interleave(self.num_heads // self.num_kv_heads, dim=1)
        context = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(context.transpose(1, 2).reshape(b, n, -1))


class MLP(nn.Module):
    def __init__(self, config: Owl2Config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: Owl2Config):
        super().__init__()
        norm = lambda: LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)  # noqa: E731
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.input_layernorm = Multiway(norm)
        self.post_attention_layernorm = Multiway(norm)

    def forward(self, x: torch.Tensor, route: Route, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x, route), route, cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x, route))


class Owl2Model(nn.Module):
    """The decoder with its vision side; names as `model.*` in the released state dict."""

    def __init__(self, config: Owl2Config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.vision_model = VisionModel(config.vision)
        self.visual_abstractor = VisualAbstractor(config.abstractor, config.hidden_size)


class MplugOwl2ForCausalLM(nn.Module):
    """mPLUG-Owl2 with the LLaMA-2 decoder: `encode_images`, `embed_multimodal`, `hidden_states`, `logits_at`.

    The paper's feature for one (image, question) is `hidden_states(...)` at layer -1 (after the final RMSNorm),
    averaged over positions; a Q-Align level score reads `logits_at` the last position.
    """

    def __init__(self, config: Owl2Config):
        super().__init__()
        self.config = config
        self.model = Owl2Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, visual tokens, hidden): what one `<|image|>` placeholder becomes."""
        return self.model.visual_abstractor(self.model.vision_model(pixel_values.to(self.dtype)))

    def embed_multimodal(self, input_ids: torch.Tensor, image_features: torch.Tensor):
        """Splice each row's visual tokens in at its one `IMAGE_TOKEN_INDEX`.

        input_ids (B, T) with exactly one image placeholder per row (rows right-padded with any id >= 0);
        image_features (B, V, D), row i for row i. Returns embeddings (B, T - 1 + V, D) and the visual-token mask.
        """
        b, t = input_ids.shape
        v = image_features.shape[1]
        is_image = input_ids == IMAGE_TOKEN_INDEX
        if not bool((is_image.sum(dim=1) == 1).all()):
            raise ValueError("every sequence needs exactly one image placeholder (<|image|>)")
        start = is_image.float().argmax(dim=1)  # (B,) position of the placeholder
        columns = torch.arange(t, device=input_ids.device).expand(b, t)
        new_columns = columns + (columns > start[:, None]) * (v - 1)
        rows = torch.arange(b, device=input_ids.device)[:, None]
        text = ~is_image
        embeds = image_features.new_zeros(b, t - 1 + v, image_features.shape[-1])
        embeds[rows.expand(b, t)[text], new_columns[text]] = self.model.embed_tokens(input_ids[text])
        visual_columns = start[:, None] + torch.arange(v, device=input_ids.device)
        embeds[rows, visual_columns] = image_features
        visual = torch.zeros(b, t - 1 + v, dtype=torch.bool, device=input_ids.device)
        visual[rows, visual_columns] = True
        return embeds, visual

    def hidden_states(self, embeds: torch.Tensor, visual: torch.Tensor, layers=(-1,)) -> list[torch.Tensor]:
        """The decoder's `hidden_states[i]` for each i in `layers`, numbered as transformers does (0: embeddings,
        -1 or num_layers: after the final norm); layers after the deepest one asked for are not run."""
        n = self.config.num_hidden_layers
        wanted = []
        for layer in layers:
            index = layer + n + 1 if layer < 0 else layer
            if not 0 <= index <= n:
                raise IndexError(f"layer {layer} out of range for {n} decoder layers")
            wanted.append(index)
        cos, sin = rotary_cos_sin(embeds.shape[1], self.config.head_dim, self.config.rope_theta, embeds.device,
                                  embeds.dtype)
        states = {0: embeds}
        x, route = embeds, Route(visual)
        for i, block in enumerate(self.model.layers[:max(wanted)], start=1):
            x = block(x, route, cos, sin)
            states[i] = x
        if n in wanted:
            states[n] = self.model.norm(x)
        return [states[i] for i in wanted]

    def logits_at(self, final_hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """LM-head logits (B, vocab) at one position per row of the final (normed) hidden states, in float32."""
        rows = torch.arange(final_hidden.shape[0], device=final_hidden.device)
        return self.lm_head(final_hidden[rows, positions]).float()
