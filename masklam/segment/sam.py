"""SAM (the `segment-anything` package) as a mask source: `--model sam_vit_h | sam_vit_l | sam_vit_b`.

Loading. A checkpoint is the official state dict (or one of the same layout). Its architecture is read off
the tensors' shapes (embedding width, depth, heads, which blocks attend globally, input size) and built from
segment-anything's own modules, so the official weights and any smaller model of the same family load
through one code path; the tests use small random-weight checkpoints saved to files.

Inference. An episode's frames are encoded in batches (`--batch-size`): each batch is upscaled once to
the encoder's input size, normalised and encoded together. Masks are then decoded frame by frame, since
each frame's prompt comes from the previous frame's mask (masklam.segment.prompts).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from masklam.envs.policies import file_sha256
from masklam.errors import UsageError
from masklam.segment.prompts import Prompt, PromptChain, PromptSpec

# The official releases: https://github.com/facebookresearch/segment-anything#model-checkpoints
RELEASES = {
    "sam_vit_h": "sam_vit_h_4b8939.pth",
    "sam_vit_l": "sam_vit_l_0b3195.pth",
    "sam_vit_b": "sam_vit_b_01ec64.pth",
}
RELEASE_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
CACHE_ENV = "MASKLAM_SAM_CHECKPOINTS"
DEFAULT_CACHE = Path.home() / ".cache" / "masklam" / "sam"
PROMPT_DIM = 256  # SAM's prompt embedding width, fixed across its releases
DECODER_HEADS = 8


def checkpoint_path(model: str, checkpoint: str | Path | None) -> Path:
    """--checkpoint, else the official file name in $MASKLAM_SAM_CHECKPOINTS or ~/.cache/masklam/sam.
    Nothing is ever downloaded."""
    filename = RELEASES[model]
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise UsageError(f"no SAM checkpoint at {path}: pass the file of the official release ({RELEASE_URL}{filename}) to --checkpoint")
        return path
    cache = Path(os.environ.get(CACHE_ENV, DEFAULT_CACHE))
    path = cache / filename
    if not path.is_file():
        raise UsageError(
            f"{model} needs its weights: {filename}, published at {RELEASE_URL}{filename}; "
            f"pass --checkpoint FILE, or put the file in {cache} (set ${CACHE_ENV} to use another folder)"
        )
    return path


@dataclass(frozen=True)
class SamArchitecture:
    """What a checkpoint's tensors say about its model."""

    image_size: int
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    window_size: int
    global_attn_indexes: tuple[int, ...]
    decoder_depth: int
    decoder_mlp_dim: int

    @classmethod
    def of(cls, state: dict[str, torch.Tensor]) -> SamArchitecture:
        try:
            patch = state["image_encoder.patch_embed.proj.weight"]
            grid = state["image_encoder.pos_embed"].shape[1]
            depth = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("image_encoder.blocks."))
            rel = [state[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape for i in range(depth)]
            layers = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("mask_decoder.transformer.layers."))
            mlp_dim = state["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0]
        except (KeyError, ValueError, IndexError, AttributeError) as error:
            raise UsageError(f"the checkpoint is not a segment-anything SAM state dict (no {error})") from None
        global_blocks = tuple(i for i, shape in enumerate(rel) if shape[0] == 2 * grid - 1)
        windows = {(shape[0] + 1) // 2 for i, shape in enumerate(rel) if i not in global_blocks}
        embed = patch.shape[0]
        return cls(
            image_size=grid * patch.shape[-1],
            patch_size=patch.shape[-1],
            embed_dim=embed,
            depth=depth,
            num_heads=embed // rel[0][1],
            window_size=windows.pop() if windows else 0,
            global_attn_indexes=global_blocks,
            decoder_depth=layers,
            decoder_mlp_dim=mlp_dim,
        )

    def build(self) -> torch.nn.Module:
        from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

        grid = self.image_size // self.patch_size
        return Sam(
            image_encoder=ImageEncoderViT(
                img_size=self.image_size,
                patch_size=self.patch_size,
                embed_dim=self.embed_dim,
                depth=self.depth,
                num_heads=self.num_heads,
                mlp_ratio=4,
                out_chans=PROMPT_DIM,
                qkv_bias=True,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                use_rel_pos=True,
                window_size=self.window_size,
                global_attn_indexes=self.global_attn_indexes,
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=PROMPT_DIM,
                image_embedding_size=(grid, grid),
                input_image_size=(self.image_size, self.image_size),
                mask_in_chans=16,
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer_dim=PROMPT_DIM,
                iou_head_depth=3,
                iou_head_hidden_dim=256,
                transformer=TwoWayTransformer(depth=self.decoder_depth, embedding_dim=PROMPT_DIM, mlp_dim=self.decoder_mlp_dim, num_heads=DECODER_HEADS),
            ),
        )


def load_sam(path: Path, device: str = "cpu") -> tuple[torch.nn.Module, SamArchitecture]:
    try:
        import segment_anything  # noqa: F401
    except ImportError:
        raise UsageError("SAM needs the segment-anything package: pip install 'masklam[sam]' torch==2.14.1 torchvision==0.29.1 (docs/segment.md)") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UsageError(f"{path} cannot be read as a SAM checkpoint ({type(error).__name__}): is the download complete?") from None
    architecture = SamArchitecture.of(state)
    model = architecture.build()
    model.load_state_dict(state)
    return model.eval().to(device), architecture


class SamSegmenter(PromptChain):
    """segment-anything's SAM: frames encoded in batches, masks decoded one by one."""

    def __init__(
        self, model: torch.nn.Module, prompts: PromptSpec, batch_size: int = 8, device: str = "cpu", half: bool = False, dtype: torch.dtype | None = None
    ) -> None:
        """``half``: float16 (GPUs); ``dtype`` another reduced precision (bfloat16 runs on CPUs too: the tests')."""
        super().__init__(prompts, batch_size)
        self.model, self.device = model, device
        self.dtype = dtype or (torch.float16 if half else torch.float32)
        # The image encoder and the mask decoder, where the work is, in reduced precision; the prompt encoder
        # stays float32 (its Fourier features multiply float32 coordinates), its outputs cast at the decoder.
        model.image_encoder.to(self.dtype)
        model.mask_decoder.to(self.dtype)
        with torch.no_grad():  # the same for every frame
            self.dense_pe = model.prompt_encoder.get_dense_pe().to(self.dtype)

    @torch.no_grad()
    def encode(self, frames: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> image embeddings (B, 256, grid, grid): one upscale and one encoder pass for the batch."""
        size = self.model.image_encoder.img_size
        x = torch.from_numpy(frames).to(self.device).permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        x = (x - self.model.pixel_mean) / self.model.pixel_std
        return self.model.image_encoder(x.to(self.dtype))

    @torch.no_grad()
    def decode(self, embedding: torch.Tensor, prompt: Prompt, frame_size: int) -> np.ndarray:
        """One frame's mask (H, W) uint8 from its embedding (1, 256, grid, grid) and a prompt in frame pixels.
        One point alone is ambiguous (part or whole?): the best of SAM's three guesses, as its authors advise."""
        masks, quality = self.candidates(embedding, prompt, frame_size, multimask=len(prompt.points) == 1 and prompt.box is None)
        return masks[int(quality.argmax())]

    @torch.no_grad()
    def candidates(self, embedding: torch.Tensor, prompt: Prompt, frame_size: int, multimask: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """SAM's masks (K, H, W) uint8 for a prompt and their predicted IoUs (K,): three guesses, or one."""
        model, size = self.model, self.model.image_encoder.img_size
        scaled = prompt.scaled(size / frame_size)
        points = None
        if scaled.points:
            coords = torch.tensor([scaled.points], dtype=torch.float32, device=self.device)
            points = (coords, torch.tensor([scaled.labels], dtype=torch.int64, device=self.device))
        boxes = None if scaled.box is None else torch.tensor([scaled.box], dtype=torch.float32, device=self.device)
        sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=None)
        low_res, quality = model.mask_decoder(
            image_embeddings=embedding,
            image_pe=self.dense_pe,
            sparse_prompt_embeddings=sparse.to(embedding.dtype),
            dense_prompt_embeddings=dense.to(embedding.dtype),
            multimask_output=multimask,
        )
        logits = F.interpolate(low_res.float(), size=(size, size), mode="bilinear", align_corners=False)
        logits = F.interpolate(logits, size=(frame_size, frame_size), mode="bilinear", align_corners=False)
        return (logits[0] > model.mask_threshold).cpu().numpy().astype(np.uint8), quality[0].float().cpu().numpy()


def describe(model: str, path: Path, architecture: SamArchitecture, prompts: PromptSpec) -> dict:
    return {"kind": model, "checkpoint": path.name, "checkpoint_sha256": file_sha256(path)[:16], "architecture": asdict(architecture), **prompts.describe()}
