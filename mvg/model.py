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

Departures from the paper, each a `ModelConfig` option that `base` and `large` leave off (`tiny-cpu`
turns on the first three, measured at its budget): `UNetDecoder` (the ViT as the bottleneck of a
small U-Net over the pair's own image), `PromptReadout` (prompt targets carried to the query by
soft correspondence), a gated image residual, and, measured but not kept, a pixel skip into the
paper's decoder and target tokens fused with their image's patches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed, trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from mvg.config import TASKS, ModelConfig, MVGConfig
from mvg.objectives import block_causal_mask

IMAGE, TARGET = 0, 1  # role embeddings
SEGMENTATION = TASKS.index("segmentation")
SLOT_SHARE_BIAS = -4.0
EMPTY_SLOT_MASS = 0.01  # prior mass of background in every slot: an empty slot reads as background
RESIDUAL_GATE_BIAS = 5.0  # sigmoid(5) = 0.993: the identity, give or take 0.7 %


class Decoder(nn.Module):
    """Four block features -> linear -> pixel shuffle -> conv3x3 -> norm -> GELU -> conv1x1 -> 1 channel.

    With `pixel_skip_channels` (a departure from the paper, see ModelConfig) the shuffled features
    are joined by a full-resolution conv stem over the pair's own image (the query image for the
    query target, Px_i for Py_i) and the image itself, and one more conv3x3 mixes them: the ViT
    says what to paint where, the skip gives it pixel-accurate edges and intensities.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        patch, channels, skip = config.patch_size, config.decoder_channels, config.pixel_skip_channels
        self.grid = config.grid
        self.linear = nn.Linear(4 * config.embed_dim, patch * patch * channels)
        self.shuffle = nn.PixelShuffle(patch)
        self.skip = (
            nn.Sequential(nn.Conv2d(1, skip, 3, padding=1), nn.GELU(), nn.Conv2d(skip, skip, 3, padding=1), nn.GELU())
            if skip
            else None
        )
        joined = channels + (skip + 1 if skip else 0)
        mixing = [nn.Conv2d(channels, channels, 3, padding=1), nn.GELU()] if skip else []
        self.head = nn.Sequential(
            nn.Conv2d(joined, channels, 3, padding=1),
            nn.GroupNorm(min(8, channels), channels),
            nn.GELU(),
            *mixing,
            nn.Conv2d(channels, 1, 1),
        )

    def forward(self, features: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        """features (B, T, 4D) of one image's tokens, and with a pixel skip the pair's image
        (B, 1, H, W) -> (B, 1, H, W)."""
        batch, tokens, _ = features.shape
        x = self.shuffle(self.linear(features).transpose(1, 2).reshape(batch, -1, self.grid, self.grid))
        if self.skip is not None:
            if image is None:
                raise ValueError("this model's decoder has a pixel skip: pass the image whose target it paints")
            x = torch.cat([x, self.skip(image.to(x.dtype)), image.to(x.dtype)], dim=1)
        return self.head(x)


class UNetDecoder(nn.Module):
    """A departure from the paper (`ModelConfig.decoder = "unet"`): the ViT is the bottleneck of a
    small U-Net over the pair's own image (the query image for the query target, Px_i for Py_i).

    The four block features at the patch grid are projected, then upsampled 2x per level back to
    pixels; at each level they are joined by a conv encoder's features of the image at that scale
    (and, at full resolution, by the image itself) and mixed by two 3x3 convs. The ViT decides what
    to paint where, from the prompt; the encoder gives it the image's own edges and intensities,
    which 8 or 16 px patch tokens blur.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.grid = config.grid
        levels = int(math.log2(config.patch_size))  # patch 8: pixels, 1/2, 1/4; the ViT at 1/8
        self.carried_channels = config.readout_heads if config.prompt_readout else 0
        self.coordinates = config.coordinates
        # the image, the carried prompt targets and, with `coordinates`, each pixel's row and column
        extra = 1 + self.carried_channels + 2 * self.coordinates
        widths = [min(config.skip_channels * 2**level, 128) for level in range(levels)]  # finest first
        self.encoder = nn.ModuleList(
            _conv_pair(1 if level == 0 else widths[level - 1], widths[level], stride=1 if level == 0 else 2)
            for level in range(levels)
        )
        self.project = nn.Linear(4 * config.embed_dim, widths[-1])
        # with `task_conditioning` each task adds its own vector to the coarsest features; at zero
        # the decoder starts as the unconditioned one
        self.task_embed = nn.Embedding(len(TASKS), widths[-1]) if config.task_conditioning else None
        if self.task_embed is not None:
            nn.init.zeros_(self.task_embed.weight)
        self.up = nn.ModuleList(
            _conv_pair(
                (widths[level + 1] if level + 1 < levels else widths[-1]) + widths[level] + (extra if level == 0 else 0),
                widths[level],
                norm=True,
            )
            for level in range(levels)
        )
        # with `image_residual` a second channel gates the pair's image into the painting:
        # out = painted + sigmoid(gate) * image (`residual_form="blend"`: the gate mixes the image
        # and the painting instead, see ModelConfig). Denoising and inpainting then start near the
        # identity (their targets are mostly the input), and segmentation learns to close the gate;
        # which task it is, the model reads from the prompt pair, as everything else
        self.residual = config.image_residual
        self.blend = config.residual_form == "blend"
        # with `readout_slots` K more channels sort each pixel into one of K slots (softmax) and
        # one more mixes the slot painting into the regression (MVG.paint_slots)
        self.slots = config.readout_slots
        self.out = nn.Conv2d(widths[0], 1 + self.residual + (self.slots + 1 if self.slots else 0), 1)
        if self.residual and config.residual_starts_open:
            with torch.no_grad():
                self.out.weight[:2].zero_()
                self.out.bias[:2] = torch.tensor([0.0, RESIDUAL_GATE_BIAS])
        if self.slots:  # the slot painting starts nearly shut (2 %): image tasks keep their regression
            with torch.no_grad():
                self.out.bias[-1] = SLOT_SHARE_BIAS
                # ModelConfig.slot_init_scale: the sorting's start made sharper
                self.out.weight[1 + self.residual : 1 + self.residual + self.slots] *= config.slot_init_scale

    def forward(
        self, features: torch.Tensor, image: torch.Tensor | None = None, carried: torch.Tensor | None = None, tasks: torch.Tensor | None = None
    ) -> torch.Tensor:
        """features (B, T, 4D) of one image's tokens and the pair's image (B, 1, H, W) -> (B, 1, H, W);
        `carried`: with a prompt read-out, the prompt target carried to this image (zeros when
        nothing comes before it); `tasks` (B,) indices into TASKS, with task conditioning. The
        regression painting alone: with slots see `heads`."""
        return self.heads(features, image, carried, tasks)[0]

    def heads(
        self, features: torch.Tensor, image: torch.Tensor | None = None, carried: torch.Tensor | None = None, tasks: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The regression painting (B, 1, H, W) and, with `readout_slots`, the slot logits
        (B, K, H, W) and the logit of the slot painting's share (B, 1, H, W); else None, None."""
        if image is None:
            raise ValueError("the unet decoder paints from the pair's image: pass it")
        batch = features.shape[0]
        x = self.project(features).transpose(1, 2).reshape(batch, -1, self.grid, self.grid)
        if self.task_embed is not None:
            if tasks is None:
                raise ValueError("this decoder is told each episode's task: pass `tasks`")
            x = x + self.task_embed(tasks.to(x.device)).to(x.dtype)[:, :, None, None]
        image = image.to(x.dtype)
        if self.carried_channels and carried is None:  # nothing to read (no prompt before this image)
            carried = image.new_zeros(batch, self.carried_channels, *image.shape[-2:])
        skips, level_input = [], image
        for encode in self.encoder:
            level_input = encode(level_input)
            skips.append(level_input)
        for level in reversed(range(len(self.up))):
            x = F.interpolate(x, size=skips[level].shape[-2:], mode="bilinear", align_corners=False)
            joined = [x, skips[level]]
            if level == 0:
                joined += [image] + ([carried.to(x.dtype)] if carried is not None else [])
                joined += [pixel_places(image)] if self.coordinates else []
            x = self.up[level](torch.cat(joined, dim=1))
        out = self.out(x)
        painted, out = out[:, :1], out[:, 1:]
        if self.residual:
            keep, out = torch.sigmoid(out[:, :1]), out[:, 1:]
            painted = keep * image + (1 - keep) * painted if self.blend else painted + keep * image
        if not self.slots:
            return painted, None, None
        return painted, out[:, : self.slots], out[:, self.slots :]


def pixel_places(image: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W): each pixel's row and column, from -1 at the first to 1 at the last."""
    batch, _, height, width = image.shape
    rows = torch.linspace(-1, 1, height, dtype=image.dtype, device=image.device)[:, None].expand(height, width)
    columns = torch.linspace(-1, 1, width, dtype=image.dtype, device=image.device)[None, :].expand(height, width)
    return torch.stack([rows, columns]).expand(batch, -1, -1, -1)


def _conv_pair(channels_in: int, channels_out: int, stride: int = 1, norm: bool = False) -> nn.Sequential:
    layers = [nn.Conv2d(channels_in, channels_out, 3, stride=stride, padding=1)]
    if norm:
        layers.append(nn.GroupNorm(min(8, channels_out), channels_out))
    layers += [nn.GELU(), nn.Conv2d(channels_out, channels_out, 3, padding=1), nn.GELU()]
    return nn.Sequential(*layers)


class PromptReadout(nn.Module):
    """A departure from the paper (`ModelConfig.prompt_readout`): the prompt targets carried over
    to the query by soft correspondence, an input of the decoder.

    Each query patch attends, through learned projections of the ViT features, to the patches of
    the prompt images; the attention weights carry the prompt targets' pixels (patch by patch)
    over to the query. The carried image is a convex combination of the prompt's own levels, so
    reading the prompt's colours -- what a random colouring asks for -- is one matching step
    instead of something the ViT must learn to route through its value vectors."""

    def __init__(self, config: ModelConfig, dim: int = 64):
        super().__init__()
        self.patch, self.grid, self.heads = config.patch_size, config.grid, config.readout_heads
        self.query = nn.Linear(4 * config.embed_dim, dim * self.heads)
        self.key = nn.Linear(4 * config.embed_dim, dim * self.heads)
        # cosine similarity at a learned temperature (as CLIP's logit scale): starting at 10, the
        # matching is sharp enough to carry distinct levels from the first steps, where scaled
        # dot products of small initial projections would average the whole prompt
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0))) if config.readout_cosine else None
        # a learned bias towards the prompt patch at the query patch's own place (a Gaussian of
        # their grid distance, one patch wide) starting at `readout_position_prior`: medical
        # images of one kind are roughly aligned, so the read-out starts as copy-the-prompt and
        # learns where to look elsewhere
        self.position_prior = (
            nn.Parameter(torch.tensor(float(config.readout_position_prior))) if config.readout_position_prior else None
        )
        rows, columns = torch.meshgrid(torch.arange(self.grid), torch.arange(self.grid), indexing="ij")
        places = torch.stack([rows.flatten(), columns.flatten()], dim=1).float()
        self.register_buffer("closeness", torch.exp(-torch.cdist(places, places) ** 2 / 2), persistent=False)

    def forward(self, query_features: torch.Tensor, prompt_features: torch.Tensor, prompt_targets: torch.Tensor) -> torch.Tensor:
        """query_features (B, T, 4D), prompt_features (B, k * T, 4D) of the prompt images, prompt
        targets (B, k, 1, H, W) -> the targets carried to the query, one per head (B, heads, H, W)."""
        batch, tokens = query_features.shape[:2]
        patch, grid, heads = self.patch, self.grid, self.heads
        queries = self.query(query_features).reshape(batch, tokens, heads, -1).transpose(1, 2)
        keys = self.key(prompt_features).expand(batch, -1, -1)
        keys = keys.reshape(batch, keys.shape[1], heads, -1).transpose(1, 2)
        if self.logit_scale is not None:
            logits = F.normalize(queries, dim=-1) @ F.normalize(keys, dim=-1).transpose(-1, -2) * self.logit_scale.clamp(max=math.log(100.0)).exp()
        else:
            logits = queries @ keys.transpose(-1, -2) / math.sqrt(queries.shape[-1])
        pairs = prompt_targets.shape[1]
        if self.position_prior is not None:
            logits = logits + self.position_prior * self.closeness.repeat(1, pairs).to(logits.dtype)
        weights = torch.softmax(logits, dim=-1)  # (B, heads, T, k * T)
        values = prompt_targets.to(weights.dtype).expand(batch, -1, -1, -1, -1).reshape(batch, pairs, grid, patch, grid, patch)
        values = values.permute(0, 1, 2, 4, 3, 5).reshape(batch, 1, pairs * grid * grid, patch * patch)
        carried = (weights @ values).reshape(batch, heads, grid, grid, patch, patch).permute(0, 1, 2, 4, 3, 5)
        return carried.reshape(batch, heads, grid * patch, grid * patch)


@dataclass
class PromptCache:
    """Per block, the keys and values of the prompt tokens: (B, heads, tokens, head_dim) each;
    with a prompt read-out also the prompt images' decoder features (B, k * T, 4D) and the prompt
    targets (B, k, 1, H, W); with slots the slot colours read from the prompts (B, K) and, where
    levels were given, each slot's share of every level (B, K, C; `slot_class_shares`)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    pairs: int
    image_features: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    slot_colours: torch.Tensor | None = None
    slot_classes: torch.Tensor | None = None

    def select(self, rows: torch.Tensor) -> PromptCache:
        def rows_of(tensor):
            return None if tensor is None else tensor[rows]

        return PromptCache(
            [k[rows] for k in self.keys], [v[rows] for v in self.values], self.pairs,
            rows_of(self.image_features), rows_of(self.targets), rows_of(self.slot_colours), rows_of(self.slot_classes),
        )


class MVG(nn.Module):
    def __init__(self, config: ModelConfig | MVGConfig):
        super().__init__()
        # how it was taught to read segmentation prompts: binary-trained models paint one class per pass
        self.colouring = config.objective.colouring if isinstance(config, MVGConfig) else "random"
        # pre-defined colouring: the (dataset, classes) table it was trained with (mvg.train)
        self.colour_table = config.objective.colour_table if isinstance(config, MVGConfig) else ()
        config = config.model if isinstance(config, MVGConfig) else config  # `MVG(preset("base"))` works too
        self.config = config
        dim = config.embed_dim
        self.patch_embed = PatchEmbed(
            img_size=config.image_size, patch_size=config.patch_size, in_chans=1, embed_dim=dim
        )
        # A departure from the paper (`ModelConfig.fuse_pairs`): a target's tokens also carry its own
        # image's patch, so a query token finds the prompt's colour for a structure in one
        # attention hop (match the appearance, read the level) instead of two.
        self.pair_image_embed = (
            PatchEmbed(img_size=config.image_size, patch_size=config.patch_size, in_chans=1, embed_dim=dim)
            if config.fuse_pairs
            else None
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
        self.decoder = UNetDecoder(config) if config.decoder == "unet" else Decoder(config)
        self.readout = PromptReadout(config) if config.prompt_readout else None
        for parameter in (self.pos_embed, self.role_embed, self.pair_embed, self.mask_token):
            trunc_normal_(parameter, std=0.02)
        self.apply(_init_weights)

    # ------------------------------------------------------------------------ tokens

    def embed(
        self,
        images: torch.Tensor,
        role: int,
        pair: int,
        mask: torch.Tensor | None = None,
        pair_image: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, 1, H, W) -> (B, T, D) tokens; `mask` (B, T) replaces patches by the mask token.
        `pair_image`: a target's own image, added to its tokens when the model fuses pairs."""
        if pair >= self.config.max_pairs:
            raise ValueError(f"pair {pair} exceeds max_pairs={self.config.max_pairs} of this model")
        tokens = self.patch_embed(images)
        if mask is not None:
            tokens = torch.where(mask.unsqueeze(-1), self.mask_token.to(tokens.dtype), tokens)
        if self.pair_image_embed is not None and pair_image is not None:
            tokens = tokens + self.pair_image_embed(pair_image)
        return tokens + self.pos_embed + self.role_embed[role] + self.pair_embed[pair]

    def embed_target(self, targets: torch.Tensor, images: torch.Tensor, pair: int, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.embed(targets, TARGET, pair, mask, pair_image=images)

    def encode(self, tokens: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """Run the blocks; return the normalised features of the four decoder blocks, concatenated."""
        features = []
        for depth, block in enumerate(self.blocks):
            tokens = block(tokens, attn_mask=attn_mask)
            features += self._features_at(depth, tokens)
        return torch.cat(features, dim=-1)

    def _features_at(self, depth: int, tokens: torch.Tensor) -> list[torch.Tensor]:
        return [norm(tokens) for index, norm in zip(self.config.feature_blocks, self.feature_norms) if index == depth]

    def decode(
        self,
        features: torch.Tensor,
        image: int,
        pixels: torch.Tensor,
        prompt_images_at: Sequence[int] = (),
        prompt_targets: torch.Tensor | None = None,
        prompt_images: torch.Tensor | None = None,
        tasks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The target painted from the tokens of sequence image `image`; `pixels` is the pair's
        own image (used by the skip decoders). The read-outs (prompt read-out, slots) read the
        prompt images at sequence positions `prompt_images_at`, their pixels `prompt_images` and
        their `prompt_targets` (B, k, 1, H, W); none: nothing is carried (zeros), no slot painting.
        `tasks` (B,) long: each row's task, an index into TASKS (`slot_share = "task"`, task
        conditioning; None: every row segmentation, as `predict`'s default task)."""
        return self.decode_parts(features, image, pixels, prompt_images_at, prompt_targets, prompt_images, tasks)[0]

    def decode_parts(
        self,
        features: torch.Tensor,
        image: int,
        pixels: torch.Tensor,
        prompt_images_at: Sequence[int] = (),
        prompt_targets: torch.Tensor | None = None,
        prompt_images: torch.Tensor | None = None,
        tasks: torch.Tensor | None = None,
        first_prompt_slots: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """`decode`, with the slot logits (B, K, H, W; None without slots) and the slot colours
        (B, K) it painted from (None when it painted none): what the slot likelihood scores.
        `first_prompt_slots`: the first prompt image's slot logits where already computed."""
        own = self._tokens_of(features, image)
        prompts = [self._tokens_of(features, at) for at in prompt_images_at]
        carried = self._carried(own, prompts, prompt_targets, pixels) if self.readout is not None else None
        colours = None
        if self.config.readout_slots and prompts and self._paints_slots(tasks):
            colours = self._slot_colours(prompts, prompt_images, prompt_targets, first_prompt_slots, tasks)
        return self._paint(own, pixels, carried, colours, tasks)

    def _paints_slots(self, tasks: torch.Tensor | None) -> bool:
        """Whether any row is painted in slots: with the task share, a batch of image episodes
        needs no slot colours (and no decoder pass over its prompt images to read them)."""
        return self.config.slot_share != "task" or tasks is None or bool((tasks == SEGMENTATION).any())

    def _paint(
        self,
        own: torch.Tensor,
        pixels: torch.Tensor,
        carried: torch.Tensor | None,
        colours: torch.Tensor | None,
        tasks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        if self.config.decoder != "unet":
            return self.decoder(own, pixels), None, None
        tasks = _tasks_or_segmentation(tasks, pixels)
        painted, slot_logits, share = self.decoder.heads(own, pixels, carried, tasks)
        if colours is None:  # no prompt before this image (or no slot painting): the regression alone
            return painted, slot_logits, None
        slots_painted = paint_slots(slot_logits, colours, hard=self._hard_slots).to(painted.dtype)
        if self.config.slot_share == "task":
            rows = tasks == SEGMENTATION
            # chosen, not mixed at a share of exactly 0 or 1: p + 1 * (s - p) is not s in floats
            return torch.where(rows.view(-1, 1, 1, 1), slots_painted, painted), slot_logits, colours
        share = torch.sigmoid(share)
        return painted + share * (slots_painted - painted), slot_logits, colours

    @property
    def _hard_slots(self) -> bool:
        """Paint (and read colours) by each pixel's winning slot: a trained model, if configured."""
        return not self.training and self.config.slot_inference == "argmax"

    def _slot_colours(
        self,
        prompts: Sequence[torch.Tensor],
        prompt_images: torch.Tensor,
        prompt_targets: torch.Tensor,
        first_prompt_slots: torch.Tensor | None = None,
        tasks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Each slot's colour read from the prompt pairs: (B, K). A prompt image's slots are
        sorted by the same decoder with nothing carried, in training and at inference alike; the
        first prompt's sort is the one the autoregressive path already made painting Py_1 (nothing
        comes before it to carry), passed as `first_prompt_slots` to save a decoder pass."""
        if prompt_images is None:
            raise ValueError("this model reads slot colours from the prompts: pass the prompt images")
        logits = self._prompt_slot_logits(prompts, prompt_images, first_prompt_slots, tasks)
        return slot_colours(logits, prompt_targets, hard=self._hard_slots)

    def _prompt_slot_logits(
        self,
        prompts: Sequence[torch.Tensor],
        prompt_images: torch.Tensor,
        first_prompt_slots: torch.Tensor | None = None,
        tasks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, k, K, H, W): each prompt image's pixels sorted into slots, nothing carried."""
        logits = [
            first_prompt_slots if i == 0 and first_prompt_slots is not None
            else self.decoder.heads(tokens, prompt_images[:, i], None, _tasks_or_segmentation(tasks, prompt_images[:, i]))[1]
            for i, tokens in enumerate(prompts)
        ]
        return torch.stack(logits, dim=1)

    def _tokens_of(self, features: torch.Tensor, image: int) -> torch.Tensor:
        tokens = self.config.tokens_per_image
        return features[:, image * tokens : (image + 1) * tokens]

    def _carried(self, own: torch.Tensor, prompts: Sequence[torch.Tensor], prompt_targets: torch.Tensor | None, pixels: torch.Tensor) -> torch.Tensor:
        if not prompts:
            return pixels.new_zeros(pixels.shape[0], self.config.readout_heads, *pixels.shape[-2:])
        return self.readout(own, torch.cat(list(prompts), dim=1), prompt_targets)

    # ------------------------------------------------------------------------ objectives

    def forward_mim(
        self,
        prompt_images: torch.Tensor,
        prompt_targets: torch.Tensor,
        query_image: torch.Tensor,
        query_target: torch.Tensor,
        prompt_masks: torch.Tensor,
        query_mask: torch.Tensor,
        tasks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked image modelling, full attention. prompt_* (B, k, 1, H, W), masks (B, k, T) and
        (B, T). Returns the repainted prompt targets (B, k, 1, H, W) and query target (B, 1, H, W)."""
        pairs = prompt_images.shape[1]
        sequence = []
        for pair in range(pairs):
            sequence.append(self.embed(prompt_images[:, pair], IMAGE, pair))
            sequence.append(self.embed_target(prompt_targets[:, pair], prompt_images[:, pair], pair, prompt_masks[:, pair]))
        sequence.append(self.embed(query_image, IMAGE, pairs))
        sequence.append(self.embed_target(query_target, query_image, pairs, query_mask))
        features = self.encode(torch.cat(sequence, dim=1), attn_mask=None)
        prompt_outputs = torch.stack(
            [self.decode(features, 2 * pair + 1, prompt_images[:, pair], tasks=tasks) for pair in range(pairs)], dim=1
        )
        prompt_images_at = [2 * pair for pair in range(pairs)]
        return prompt_outputs, self.decode(features, 2 * pairs + 1, query_image, prompt_images_at, prompt_targets, prompt_images, tasks)

    def forward_ar(
        self,
        prompt_images: torch.Tensor,
        prompt_targets: torch.Tensor,
        query_image: torch.Tensor,
        with_slots: bool = False,
        tasks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """Autoregressive, block-causal: [Px_1, Py_1, ..., Px_k, Py_k, X]. The output at each image
        predicts the next one: returns the predictions of Py_1..Py_k (B, k, 1, H, W) and of Y;
        `with_slots` also the query's slot logits and slot colours (see `decode_parts`) and the
        first prompt image's slot logits (B, K, H, W), which the colours were read through."""
        pairs = prompt_images.shape[1]
        sequence = []
        for pair in range(pairs):
            sequence.append(self.embed(prompt_images[:, pair], IMAGE, pair))
            sequence.append(self.embed_target(prompt_targets[:, pair], prompt_images[:, pair], pair))
        sequence.append(self.embed(query_image, IMAGE, pairs))
        images = 2 * pairs + 1
        mask = block_causal_mask(images, self.config.tokens_per_image, device=query_image.device)
        features = self.encode(torch.cat(sequence, dim=1), attn_mask=mask)
        # Py_i is painted from the pairs before it: the read-out sees those alone
        prompt_parts = [
            self.decode_parts(
                features, 2 * pair, prompt_images[:, pair], [2 * j for j in range(pair)], prompt_targets[:, :pair],
                prompt_images[:, :pair], tasks,
            )
            for pair in range(pairs)
        ]
        prompt_outputs = torch.stack([painted for painted, _, _ in prompt_parts], dim=1)
        prompt_images_at = [2 * pair for pair in range(pairs)]
        query = self.decode_parts(
            features, 2 * pairs, query_image, prompt_images_at, prompt_targets, prompt_images, tasks, prompt_parts[0][1]
        )
        return (prompt_outputs, *query, prompt_parts[0][1]) if with_slots else (prompt_outputs, query[0])

    # ------------------------------------------------------------------------ inference

    @torch.no_grad()
    def encode_prompts(
        self, prompt_images: torch.Tensor, prompt_targets: torch.Tensor, task: str = "segmentation", levels: torch.Tensor | None = None
    ) -> PromptCache:
        """Keys and values of the prompt pairs in every block (block-causal among the prompts);
        `task` says how the decoder sorts the prompts into slots, where it is told the task.
        `levels` (C,): the grey levels the prompt targets are coloured with, background first; with
        slots the cache then also holds each slot's share of each level (`class_scores_cached`)."""
        pairs = prompt_images.shape[1]
        tokens = torch.cat(
            [
                embedded
                for pair in range(pairs)
                for embedded in (
                    self.embed(prompt_images[:, pair], IMAGE, pair),
                    self.embed_target(prompt_targets[:, pair], prompt_images[:, pair], pair),
                )
            ],
            dim=1,
        )
        mask = block_causal_mask(2 * pairs, self.config.tokens_per_image, device=tokens.device)
        keys, values, features = [], [], []
        reads_prompts = self.readout is not None or bool(self.config.readout_slots)
        for depth, block in enumerate(self.blocks):
            _, key, value = _qkv(block, block.norm1(tokens))
            keys.append(key)
            values.append(value)
            tokens = block(tokens, attn_mask=mask)
            if reads_prompts:
                features += self._features_at(depth, tokens)
        if not reads_prompts:
            return PromptCache(keys, values, pairs)
        features = torch.cat(features, dim=-1)
        prompts = [self._tokens_of(features, 2 * pair) for pair in range(pairs)]
        tasks = _task_indices(prompt_images, task)
        colours = classes = None
        if self.config.readout_slots:
            logits = self._prompt_slot_logits(prompts, prompt_images, tasks=tasks)
            colours = slot_colours(logits, prompt_targets, hard=self._hard_slots)
            classes = None if levels is None else slot_class_shares(logits, prompt_targets, levels)
        return PromptCache(keys, values, pairs, torch.cat(prompts, dim=1), prompt_targets, colours, classes)

    @torch.no_grad()
    def predict_cached(self, query: torch.Tensor, cache: PromptCache, task: str = "segmentation") -> torch.Tensor:
        """Query images (B, 1, H, W) against cached prompts (batch 1 or B) -> (B, 1, H, W) in [0, 1]."""
        return self._query_parts(query, cache, task)[0].clamp(0, 1)

    @torch.no_grad()
    def class_scores_cached(self, query: torch.Tensor, cache: PromptCache, task: str = "segmentation") -> torch.Tensor:
        """Query images (B, 1, H, W) against prompts cached with their levels -> (B, C, H, W): each
        pixel's vote for each level (`vote_slots`), in the order of the levels the cache was given."""
        if cache.slot_classes is None:
            raise ValueError("class scores need slots and prompts encoded with their levels (encode_prompts(..., levels=...))")
        slot_logits = self._query_parts(query, cache, task)[1]
        return vote_slots(slot_logits, cache.slot_classes)

    def _query_parts(self, query: torch.Tensor, cache: PromptCache, task: str) -> tuple[torch.Tensor, ...]:
        """`_paint`'s parts for query images against cached prompts: painting, slot logits, colours."""
        tokens = self.embed(query, IMAGE, cache.pairs)
        features = []
        for depth, block in enumerate(self.blocks):
            tokens = _block_with_prefix(block, tokens, cache.keys[depth], cache.values[depth])
            features += self._features_at(depth, tokens)
        features = torch.cat(features, dim=-1)
        carried = None if self.readout is None else self._carried(features, [cache.image_features], cache.targets, query)
        return self._paint(features, query, carried, cache.slot_colours, _task_indices(query, task))

    @torch.no_grad()
    def predict(
        self, query: torch.Tensor, prompt_images: torch.Tensor, prompt_targets: torch.Tensor, task: str = "segmentation"
    ) -> torch.Tensor:
        """query (B, 1, H, W), prompt_images / prompt_targets (B, k, 1, H, W) -> (B, 1, H, W) in [0, 1].

        Rows that share the same prompts (a volume's slices against one prompt slice, say) share one
        prompt encoding. For segmentation the output is coloured: decode it with
        `mvg.colouring.Colouring.decode`."""
        cache, rows = self._shared_prompts(query, prompt_images, prompt_targets, task)
        return self.predict_cached(query, cache.select(rows), task)

    @torch.no_grad()
    def predict_class_scores(
        self, query: torch.Tensor, prompt_images: torch.Tensor, prompt_targets: torch.Tensor, levels: torch.Tensor, task: str = "segmentation"
    ) -> torch.Tensor:
        """As `predict`, with prompt targets coloured in `levels` (C,), background first -> (B, C, H, W):
        each query pixel's vote for each level through the slots (`ModelConfig.slot_inference`
        "vote"); the argmax over C is its class."""
        cache, rows = self._shared_prompts(query, prompt_images, prompt_targets, task, levels)
        return self.class_scores_cached(query, cache.select(rows), task)

    def _shared_prompts(
        self, query: torch.Tensor, prompt_images: torch.Tensor, prompt_targets: torch.Tensor, task: str, levels: torch.Tensor | None = None
    ) -> tuple[PromptCache, torch.Tensor]:
        """The distinct prompts of a batch encoded once, and each query row's index into them."""
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
        if prompt_images.shape != prompt_targets.shape or prompt_images.shape[0] != query.shape[0]:
            raise ValueError(
                f"prompt images {tuple(prompt_images.shape)}, prompt targets {tuple(prompt_targets.shape)} "
                f"and query {tuple(query.shape)} do not agree"
            )
        prompts = torch.cat([prompt_images, prompt_targets], dim=1).flatten(1)
        unique, rows = torch.unique(prompts, dim=0, return_inverse=True)
        first = _first_rows(rows, len(unique))
        return self.encode_prompts(prompt_images[first], prompt_targets[first], task, levels), rows

    @torch.no_grad()
    def predict_uncached(
        self, query: torch.Tensor, prompt_images: torch.Tensor, prompt_targets: torch.Tensor, task: str = "segmentation"
    ) -> torch.Tensor:
        """The same prediction by re-encoding prompts with every query (the naive path; benchmarks)."""
        return self.forward_ar(prompt_images, prompt_targets, query, tasks=_task_indices(query, task))[1].clamp(0, 1)


def slot_colours(slot_logits: torch.Tensor, prompt_targets: torch.Tensor, hard: bool = False) -> torch.Tensor:
    """The colour of each slot: the mean prompt target over the prompt pixels sorted into it
    (softly, or with `hard` only those whose winning slot it is).

    slot_logits (B, k, K, H, W) of the prompt images, prompt_targets (B, k, 1, H, W) -> (B, K). A
    slot the prompts leave empty reads as background (0): a hundredth of a pixel's prior mass,
    small enough not to pull a ten-pixel structure's level towards 0 by more than 0.1 %."""
    weights = _slot_weights(slot_logits, dim=2, hard=hard)
    mass = weights.sum(dim=(1, 3, 4))
    return (weights * prompt_targets.float()).sum(dim=(1, 3, 4)) / (mass + EMPTY_SLOT_MASS)


def slot_class_shares(slot_logits: torch.Tensor, prompt_targets: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Each slot's share of each level among the prompt pixels sorted into it (softly).

    slot_logits (B, k, K, H, W) of the prompt images, prompt_targets (B, k, 1, H, W) coloured in
    `levels` (C,), background first -> (B, K, C), each row summing to 1. Levels are matched exactly
    (colouring and nearest resizing copy them). A slot the prompts leave empty votes background,
    with the prior mass `slot_colours` gives it."""
    weights = _slot_weights(slot_logits, dim=2, hard=False)
    members = (prompt_targets.float() == levels.float().view(1, 1, -1, 1, 1)).float()  # (B, k, C, H, W)
    mass = torch.einsum("bjkhw,bjchw->bkc", weights, members)
    mass[..., 0] += EMPTY_SLOT_MASS
    return mass / mass.sum(dim=-1, keepdim=True)


def vote_slots(slot_logits: torch.Tensor, shares: torch.Tensor) -> torch.Tensor:
    """Each pixel's vote for each level: its slot probabilities (B, K, H, W) times the slots'
    level shares (B or 1, K, C) -> (B, C, H, W)."""
    weights = _slot_weights(slot_logits, dim=1, hard=False)
    return torch.einsum("bkhw,bkc->bchw", weights, shares.expand(slot_logits.shape[0], -1, -1))


def paint_slots(slot_logits: torch.Tensor, colours: torch.Tensor, hard: bool = False) -> torch.Tensor:
    """Each pixel painted in its slots' colours (softmax-weighted, or with `hard` its winning
    slot's): (B, K, H, W) logits, (B or 1, K) -> (B, 1, H, W)."""
    weights = _slot_weights(slot_logits, dim=1, hard=hard)
    return (weights * colours[:, :, None, None]).sum(dim=1, keepdim=True).to(slot_logits.dtype)


def _slot_weights(slot_logits: torch.Tensor, dim: int, hard: bool) -> torch.Tensor:
    """Softmax over the slot axis, or its one-hot argmax."""
    if not hard:
        return torch.softmax(slot_logits.float(), dim=dim)
    winners = slot_logits.argmax(dim=dim, keepdim=True)
    return torch.zeros_like(slot_logits, dtype=torch.float32).scatter_(dim, winners, 1.0)


def _task_indices(images: torch.Tensor, task: str) -> torch.Tensor:
    """(B,) long: every row of `images` is a `task` episode (its index into TASKS)."""
    return torch.full((images.shape[0],), TASKS.index(task), dtype=torch.long, device=images.device)


def _tasks_or_segmentation(tasks: torch.Tensor | None, images: torch.Tensor) -> torch.Tensor:
    """Each row's task; rows not said to be anything are segmentation, as in `predict`."""
    return _task_indices(images, "segmentation") if tasks is None else tasks.to(images.device)


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
