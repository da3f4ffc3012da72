"""The MVG model: a plain ViT encoder over sequences of whole images and a light conv decoder.

Every image of an episode becomes `tokens_per_image` patch tokens with its own position embedding
plus two learned embeddings: its role (image or target) and its pair index (prompt 1..k, query).
The same encoder serves both objectives of the paper (3.3):

- masked image modelling: [Px_1, Py_1, ..., X, Y] with some target patches replaced by a mask token
  (the 2 x 2 canvas of prompt image | prompt target / query image | query target), full attention;
  the decoder repaints the target images;
- autoregressive: [Px_1, Py_1, ..., Px_k, Py_k, X] with block-causal attention (full inside an
  image, causal across images); the output at an image predicts the next image, so Px_i predicts
  Py_i and X predicts Y.

Inference runs the autoregressive path. Prompts never attend to the query, so their keys and values
are computed once and reused for every query slice that shares them (`encode_prompts`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed, trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from mvg.config import TASKS, ModelConfig, MVGConfig
from mvg.objectives import block_causal_mask

IMAGE, TARGET = 0, 1  # role embeddings


class Decoder(nn.Module):
    """Four block features -> linear -> pixel shuffle -> conv3x3 -> norm -> GELU -> conv1x1 -> 1 channel."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        patch, channels = config.patch_size, config.decoder_channels
        self.grid = config.grid
        self.linear = nn.Linear(4 * config.embed_dim, patch * patch * channels)
        self.shuffle = nn.PixelShuffle(patch)
        self.head = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(min(8, channels), channels),
            nn.GELU(),
            nn.Conv2d(channels, 1, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, T, 4D) of one image's tokens -> (B, 1, H, W)."""
        batch, tokens, _ = features.shape
        x = self.linear(features).transpose(1, 2).reshape(batch, -1, self.grid, self.grid)
        return self.head(self.shuffle(x))


@dataclass
class PromptCache:
    """Per block, the keys and values of the prompt tokens: (B, heads, tokens, head_dim) each."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    pairs: int

    def select(self, rows: torch.Tensor) -> PromptCache:
        return PromptCache([k[rows] for k in self.keys], [v[rows] for v in self.values], self.pairs)


class MVG(nn.Module):
    def __init__(self, config: ModelConfig | MVGConfig):
        super().__init__()
        # how it was taught to read segmentation prompts: binary-trained models paint one class per pass
        self.colouring = config.objective.colouring if isinstance(config, MVGConfig) else "random"
        config = config.model if isinstance(config, MVGConfig) else config  # `MVG(preset("base"))` works too
        self.config = config
        dim = config.embed_dim
        self.patch_embed = PatchEmbed(
            img_size=config.image_size, patch_size=config.patch_size, in_chans=1, embed_dim=dim
        )
        self.pos_embed = nn.Parameter(torch.zeros(1, config.tokens_per_image, dim))
        self.role_embed = nn.Parameter(torch.zeros(2, dim))
        self.pair_embed = nn.Parameter(torch.zeros(config.max_pairs, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        rates = [config.drop_path * i / max(1, config.depth - 1) for i in range(config.depth)]  # stochastic depth rule
        self.blocks = nn.ModuleList(
            Block(dim, config.num_heads, config.mlp_ratio, qkv_bias=True, drop_path=rate) for rate in rates
        )
        self.feature_norms = nn.ModuleList(nn.LayerNorm(dim, eps=1e-6) for _ in config.feature_blocks)
        self.decoder = Decoder(config)
        for parameter in (self.pos_embed, self.role_embed, self.pair_embed, self.mask_token):
            trunc_normal_(parameter, std=0.02)
        self.apply(_init_weights)

    # ------------------------------------------------------------------------ tokens

    def embed(self, images: torch.Tensor, role: int, pair: int, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 1, H, W) -> (B, T, D) tokens; `mask` (B, T) replaces patches by the mask token."""
        if pair >= self.config.max_pairs:
            raise ValueError(f"pair {pair} exceeds max_pairs={self.config.max_pairs} of this model")
        tokens = self.patch_embed(images)
        if mask is not None:
            tokens = torch.where(mask.unsqueeze(-1), self.mask_token.to(tokens.dtype), tokens)
        return tokens + self.pos_embed + self.role_embed[role] + self.pair_embed[pair]

    def encode(self, tokens: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """Run the blocks; return the normalised features of the four decoder blocks, concatenated."""
        features = []
        for depth, block in enumerate(self.blocks):
            tokens = block(tokens, attn_mask=attn_mask)
            features += self._features_at(depth, tokens)
        return torch.cat(features, dim=-1)

    def _features_at(self, depth: int, tokens: torch.Tensor) -> list[torch.Tensor]:
        return [norm(tokens) for index, norm in zip(self.config.feature_blocks, self.feature_norms) if index == depth]

    def decode(self, features: torch.Tensor, image: int) -> torch.Tensor:
        tokens = self.config.tokens_per_image
        return self.decoder(features[:, image * tokens : (image + 1) * tokens])

    # ------------------------------------------------------------------------ objectives

    def forward_mim(
        self,
        prompt_images: torch.Tensor,
        prompt_targets: torch.Tensor,
        query_image: torch.Tensor,
        query_target: torch.Tensor,
        prompt_masks: torch.Tensor,
        query_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked image modelling, full attention. prompt_* (B, k, 1, H, W), masks (B, k, T) and
        (B, T). Returns the repainted prompt targets (B, k, 1, H, W) and query target (B, 1, H, W)."""
        pairs = prompt_images.shape[1]
        sequence = []
        for pair in range(pairs):
            sequence.append(self.embed(prompt_images[:, pair], IMAGE, pair))
            sequence.append(self.embed(prompt_targets[:, pair], TARGET, pair, prompt_masks[:, pair]))
        sequence.append(self.embed(query_image, IMAGE, pairs))
        sequence.append(self.embed(query_target, TARGET, pairs, query_mask))
        features = self.encode(torch.cat(sequence, dim=1), attn_mask=None)
        prompt_outputs = torch.stack([self.decode(features, 2 * pair + 1) for pair in range(pairs)], dim=1)
        return prompt_outputs, self.decode(features, 2 * pairs + 1)

    def forward_ar(
        self, prompt_images: torch.Tensor, prompt_targets: torch.Tensor, query_image: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Autoregressive, block-causal: [Px_1, Py_1, ..., Px_k, Py_k, X]. The output at each image
        predicts the next one: returns the predictions of Py_1..Py_k (B, k, 1, H, W) and of Y."""
        pairs = prompt_images.shape[1]
        sequence = []
        for pair in range(pairs):
            sequence.append(self.embed(prompt_images[:, pair], IMAGE, pair))
            sequence.append(self.embed(prompt_targets[:, pair], TARGET, pair))
        sequence.append(self.embed(query_image, IMAGE, pairs))
        images = 2 * pairs + 1
        mask = block_causal_mask(images, self.config.tokens_per_image, device=query_image.device)
        features = self.encode(torch.cat(sequence, dim=1), attn_mask=mask)
        prompt_outputs = torch.stack([self.decode(features, 2 * pair) for pair in range(pairs)], dim=1)
        return prompt_outputs, self.decode(features, 2 * pairs)

    # ------------------------------------------------------------------------ inference

    @torch.no_grad()
    def encode_prompts(self, prompt_images: torch.Tensor, prompt_targets: torch.Tensor) -> PromptCache:
        """Keys and values of the prompt pairs in every block (block-causal among the prompts)."""
        pairs = prompt_images.shape[1]
        tokens = torch.cat(
            [
                self.embed(images[:, pair], role, pair)
                for pair in range(pairs)
                for images, role in ((prompt_images, IMAGE), (prompt_targets, TARGET))
            ],
            dim=1,
        )
        mask = block_causal_mask(2 * pairs, self.config.tokens_per_image, device=tokens.device)
        keys, values = [], []
        for block in self.blocks:
            _, key, value = _qkv(block, block.norm1(tokens))
            keys.append(key)
            values.append(value)
            tokens = block(tokens, attn_mask=mask)
        return PromptCache(keys, values, pairs)

    @torch.no_grad()
    def predict_cached(self, query: torch.Tensor, cache: PromptCache) -> torch.Tensor:
        """Query images (B, 1, H, W) against cached prompts (batch 1 or B) -> (B, 1, H, W) in [0, 1]."""
        tokens = self.embed(query, IMAGE, cache.pairs)
        features = []
        for depth, block in enumerate(self.blocks):
            tokens = _block_with_prefix(block, tokens, cache.keys[depth], cache.values[depth])
            features += self._features_at(depth, tokens)
        return self.decoder(torch.cat(features, dim=-1)).clamp(0, 1)

    @torch.no_grad()
    def predict(
        self, query: torch.Tensor, prompt_images: torch.Tensor, prompt_targets: torch.Tensor, task: str = "segmentation"
    ) -> torch.Tensor:
        """query (B, 1, H, W), prompt_images / prompt_targets (B, k, 1, H, W) -> (B, 1, H, W) in [0, 1].

        Rows that share the same prompts (a volume's slices against one prompt slice, say) share one
        prompt encoding. For segmentation the output is coloured: decode it with
        `mvg.colouring.Colouring.decode`."""
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
        if prompt_images.shape != prompt_targets.shape or prompt_images.shape[0] != query.shape[0]:
            raise ValueError(
                f"prompt images {tuple(prompt_images.shape)}, prompt targets {tuple(prompt_targets.shape)} "
                f"and query {tuple(query.shape)} do not agree"
            )
        prompts = torch.cat([prompt_images, prompt_targets], dim=1).flatten(1)
        unique, rows = torch.unique(prompts, dim=0, return_inverse=True)
        cache = self.encode_prompts(prompt_images[_first_rows(rows, len(unique))], prompt_targets[_first_rows(rows, len(unique))])
        return self.predict_cached(query, cache.select(rows))

    @torch.no_grad()
    def predict_uncached(
        self, query: torch.Tensor, prompt_images: torch.Tensor, prompt_targets: torch.Tensor
    ) -> torch.Tensor:
        """The same prediction by re-encoding prompts with every query (the naive path; benchmarks)."""
        return self.forward_ar(prompt_images, prompt_targets, query)[1].clamp(0, 1)


def _first_rows(inverse: torch.Tensor, count: int) -> torch.Tensor:
    """Index of one row for each unique prompt."""
    first = torch.full((count,), inverse.numel(), dtype=torch.long, device=inverse.device)
    return first.scatter_reduce(0, inverse, torch.arange(inverse.numel(), device=inverse.device), reduce="amin")


def _qkv(block: Block, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """timm Attention's q, k, v for normalised tokens x: (B, heads, N, head_dim) each."""
    attention = block.attn
    batch, tokens, _ = x.shape
    qkv = attention.qkv(x).reshape(batch, tokens, 3, attention.num_heads, attention.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    return attention.q_norm(q), attention.k_norm(k), v


def _block_with_prefix(block: Block, x: torch.Tensor, prefix_keys: torch.Tensor, prefix_values: torch.Tensor) -> torch.Tensor:
    """timm Block.forward for tokens `x` that attend to themselves and to cached prefix keys/values
    (the prompts); mirrors Block and Attention exactly, which the cached-vs-uncached test checks."""
    attention = block.attn
    q, k, v = _qkv(block, block.norm1(x))
    batch = x.shape[0]
    keys = torch.cat([prefix_keys.expand(batch, -1, -1, -1), k], dim=2)
    values = torch.cat([prefix_values.expand(batch, -1, -1, -1), v], dim=2)
    out = F.scaled_dot_product_attention(q, keys, values)
    out = out.transpose(1, 2).reshape(batch, x.shape[1], attention.attn_dim)
    out = attention.proj(attention.norm(out))
    x = x + block.drop_path1(block.ls1(out))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
