"""Interactive (click / box) segmentation with SAM3's released tracker heads, and its caches.

One backbone pass per image serves text grounding and clicks alike: `InteractiveSegmenter.embed_image`
runs the detector's own ViT once (both neck pyramids) and keeps the result in an LRU keyed by an image id
(the content hash by default); every `segment_image` round then runs only the prompt encoder and the
mask decoder. A second LRU keeps each round's low-res logits keyed by (image id, prompt set): a round
without `mask_input` is fed the logits of the newest cached prompt set that is a strict subset of its
own (one click fewer preferred), as annotation tools do when a click is added.

`predict_masks` holds the semantics of Meta's interactive predictor: coordinates are pixels of the
original image (or [0, 1] with `normalize_coords=False`), boxes become two corner points placed before
the clicks, multimask output returns tokens 1-3, a single mask falls back to the best multimask one when
unstable, low-res logits (4x the token grid, 288 x 288 at 1008 px) are clamped to +-32, and background
holes of at most `max_hole_area` low-res pixels are filled before upsampling to the original size.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from sam3.model.sam3_image import Sam3Image
from sam3.model.tracker import InteractiveFeatures, InteractiveOutput, Tracker

logger = logging.getLogger(__name__)

DISABLE_LOGITS_CACHE_ENV = "SAM3_DISABLE_LOGITS_CACHE"  # "1" turns the prior-prompt logits cache off
LOGITS_CLAMP = 32.0
HOLE_FILL_LOGIT = 10.0  # added to the threshold where a hole is filled
BOX_CORNER_LABELS = (2, 3)


@dataclass
class InteractivePrediction:
    """Result of one prompt round.

    Attributes:
        masks: (C, H0, W0) or (B, C, H0, W0) when several prompt sets were given: logits
            (`return_logits`) or bool masks at the original size; C = 3 (multimask) or 1.
        iou_predictions: (C,) or (B, C) predicted IoU.
        low_res_masks: (C, 4h, 4w) or (B, C, 4h, 4w) logits clamped to +-32, the next round's `mask_input`.
        output: the prompt embeddings and all four decoder tokens' outputs (B leading).
    """

    masks: torch.Tensor
    iou_predictions: torch.Tensor
    low_res_masks: torch.Tensor
    output: InteractiveOutput


@torch.no_grad()
def predict_masks(
    tracker: Tracker,
    features: InteractiveFeatures,
    orig_hw: tuple[int, int],
    *,
    points: torch.Tensor | None = None,
    point_labels: torch.Tensor | None = None,
    boxes: torch.Tensor | None = None,
    mask_input: torch.Tensor | None = None,
    multimask_output: bool = True,
    return_logits: bool = False,
    normalize_coords: bool = True,
    max_hole_area: int = 256,
    mask_threshold: float = 0.0,
) -> InteractivePrediction:
    """Segment one image from clicks, boxes and / or a previous round's logits.

    Args:
        tracker: the interactive heads.
        features: the image's `Tracker.image_features` (batch 1).
        orig_hw: (H0, W0) of the original image.
        points: (N, 2) or (B, N, 2) (x, y) in original pixels, or in [0, 1] with `normalize_coords=False`.
        point_labels: (N,) or (B, N) 1 positive, 0 negative, -1 padding.
        boxes: (4,) or (B, 4) xyxy in the same coordinates as `points`.
        mask_input: (1, 4h, 4w) or (B, 1, 4h, 4w) low-res logits of a previous round.
        multimask_output: three masks (tokens 1-3) instead of one.
        return_logits: masks as upsampled logits instead of bool.
        normalize_coords: coordinates are original pixels (True) or already in [0, 1] (False).
        max_hole_area: fill background components up to this many low-res pixels (0 disables).
        mask_threshold: logit threshold of masks and holes.
    """
    if points is None and boxes is None:
        raise ValueError("give points (with point_labels) and / or boxes")
    if (points is None) != (point_labels is None):
        raise ValueError("points and point_labels go together: give both or neither")
    device = features.image_embed.device
    scale = torch.tensor([1 / orig_hw[1], 1 / orig_hw[0]], device=device) if normalize_coords else None

    def to_model_pixels(xy: torch.Tensor) -> torch.Tensor:
        xy = torch.as_tensor(xy, dtype=torch.float32, device=device)
        return (xy * scale if scale is not None else xy) * tracker.image_size

    coords, labels = None, None
    if points is not None:
        coords = to_model_pixels(points)
        labels = torch.as_tensor(point_labels, dtype=torch.int64, device=device)
        if coords.ndim == 2:
            coords, labels = coords[None], labels[None]  # 1, N, 2 and 1, N
    if boxes is not None:
        corners = to_model_pixels(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 2, 2))  # B, 2, 2
        corner_labels = torch.tensor([BOX_CORNER_LABELS], device=device).expand(corners.shape[0], -1)
        if coords is None:
            coords, labels = corners, corner_labels
        else:
            coords, labels = torch.cat([corners, coords], dim=1), torch.cat([corner_labels, labels], dim=1)
    if mask_input is not None:
        mask_input = torch.as_tensor(mask_input, dtype=torch.float32, device=device)
        if mask_input.ndim == 3:
            mask_input = mask_input[None]  # 1, 1, 4h, 4w

    output = tracker(features, coords, labels, mask_input)
    low_res, iou = tracker.sam_mask_decoder.select(output.decoded, multimask_output)  # B, C, 4h, 4w and B, C
    masks = low_res.float()
    if max_hole_area > 0:
        masks = fill_small_holes(masks, max_hole_area, mask_threshold)
    masks = F.interpolate(masks, size=orig_hw, mode="bilinear", align_corners=False)
    if not return_logits:
        masks = masks > mask_threshold
    low_res = low_res.clamp(-LOGITS_CLAMP, LOGITS_CLAMP)
    if masks.shape[0] == 1:  # one prompt set: no batch dim, as Meta's predictor returns
        masks, iou, low_res = masks[0], iou[0], low_res[0]
    return InteractivePrediction(masks=masks, iou_predictions=iou, low_res_masks=low_res, output=output)


def fill_small_holes(logits: torch.Tensor, max_area: int, threshold: float = 0.0) -> torch.Tensor:
    """Set background components (logit <= threshold, 8-connected) of at most `max_area` pixels,
    also those touching the border, to threshold + 10.

    Args:
        logits: (B, C, H, W) mask logits.

    Returns:
        (B, C, H, W) logits with the small holes filled.
    """
    background = (logits <= threshold).flatten(0, 1).cpu().numpy()  # B*C, H, W
    holes = np.zeros_like(background)
    eight = np.ones((3, 3), dtype=bool)
    for i, plane in enumerate(background):
        components, _ = ndimage.label(plane, structure=eight)
        areas = np.bincount(components.ravel())
        small = (areas <= max_area) & (np.arange(len(areas)) > 0)
        holes[i] = small[components]
    holes = torch.from_numpy(holes).to(logits.device).reshape(logits.shape)
    return torch.where(holes, torch.full_like(logits, threshold + HOLE_FILL_LOGIT), logits)


class LruCache:
    """A thread-safe least-recently-used mapping with a fixed capacity (0 stores nothing)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"cache capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[Hashable, object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> object | None:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: Hashable, value: object) -> None:
        with self._lock:
            if self.capacity == 0:
                return
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def newest_first(self) -> list[tuple[Hashable, object]]:
        """A snapshot of the entries, most recently used first."""
        with self._lock:
            return list(reversed(self._items.items()))

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


@dataclass
class _Embedding:
    """What `embed_image` keeps per image id."""

    vision: dict  # the detector's `forward_image` output (text prompts reuse it)
    features: InteractiveFeatures
    orig_hw: tuple[int, int]


class InteractiveSegmenter:
    """Embed once, then many cheap click / box rounds on the same image; thread-safe.

    Args:
        model: a `Sam3Image` built with its `tracker` (e.g. `build_model("sam3", checkpoint=...)`), in eval mode.
        image_cache_size: image embeddings kept (LRU by image id).
        logits_cache_size: low-res logits kept (LRU by (image id, prompt set)); the environment variable
            `SAM3_DISABLE_LOGITS_CACHE=1` turns this cache off.
        max_hole_area: background holes filled before upsampling, in low-res pixels.
        mask_threshold: logit threshold of the returned masks.
    """

    def __init__(
        self,
        model: Sam3Image,
        *,
        image_cache_size: int = 4,
        logits_cache_size: int = 64,
        max_hole_area: int = 256,
        mask_threshold: float = 0.0,
    ) -> None:
        if model.tracker is None:
            raise ValueError(
                "the model has no interactive heads; build it with its `tracker` config (not tracker=null)"
            )
        self.model = model
        self.max_hole_area = max_hole_area
        self.mask_threshold = mask_threshold
        self.images = LruCache(image_cache_size)
        disabled = os.environ.get(DISABLE_LOGITS_CACHE_ENV, "") not in ("", "0")
        self.logits = LruCache(0 if disabled else logits_cache_size)
        self._embed_lock = threading.Lock()

    @torch.no_grad()
    def embed_image(self, image: np.ndarray | torch.Tensor, image_id: str | None = None) -> str:
        """Run the backbone on an image unless its id is cached; returns the id.

        Args:
            image: (H0, W0, 3) uint8 RGB array or tensor.
            image_id: key of the embedding; the sha256 of the pixels and shape when None.
        """
        pixels = image if isinstance(image, torch.Tensor) else torch.from_numpy(np.array(image))  # writable copy
        if pixels.ndim != 3 or pixels.shape[-1] != 3:
            raise ValueError(f"image must be (H, W, 3) RGB, got shape {tuple(pixels.shape)}")
        image_id = image_id or _content_hash(pixels)
        with self._embed_lock:
            if self.images.get(image_id) is not None:
                return image_id
            device = next(self.model.parameters()).device
            size = self.model.tracker.image_size
            x = pixels.permute(2, 0, 1)[None].to(device=device, dtype=torch.float32) / 255  # 1, 3, H0, W0
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
            vision = self.model.backbone.forward_image((x - 0.5) / 0.5, with_sam2=True)
            features = self.model.tracker.image_features(vision["sam2_backbone_fpn"])
            self.images.put(image_id, _Embedding(vision, features, (int(pixels.shape[0]), int(pixels.shape[1]))))
        return image_id

    def segment_image(
        self,
        *,
        image_id: str | None = None,
        image: np.ndarray | torch.Tensor | None = None,
        points: Sequence[Sequence[float]] | torch.Tensor | None = None,
        point_labels: Sequence[int] | torch.Tensor | None = None,
        boxes: Sequence[float] | torch.Tensor | None = None,
        multimask_output: bool = True,
        mask_input: torch.Tensor | None = None,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> InteractivePrediction:
        """One prompt round on an embedded image (see `predict_masks` for the arguments).

        Give `image_id` of an earlier `embed_image`, or `image` (embedded now unless cached). Without
        `mask_input`, the cached logits of the newest strict subset of this prompt set are fed back.
        """
        if image is not None:
            image_id = self.embed_image(image, image_id)
        if image_id is None:
            raise ValueError("give image_id (from embed_image) or image")
        embedding = self.images.get(image_id)
        if embedding is None:
            raise KeyError(f"image {image_id!r} is not embedded (or was evicted); call embed_image first")
        prompt = _prompt_key(points, point_labels, boxes)
        batched = (boxes is not None and torch.as_tensor(boxes).ndim == 2 and len(boxes) > 1) or (
            points is not None and torch.as_tensor(points).ndim == 3
        )
        if mask_input is None and not batched:
            mask_input = self._prior_logits(image_id, prompt)
        result = predict_masks(
            self.model.tracker,
            embedding.features,
            embedding.orig_hw,
            points=points,
            point_labels=point_labels,
            boxes=boxes,
            mask_input=mask_input,
            multimask_output=multimask_output,
            return_logits=return_logits,
            normalize_coords=normalize_coords,
            max_hole_area=self.max_hole_area,
            mask_threshold=self.mask_threshold,
        )
        if result.low_res_masks.ndim == 3:  # one prompt set: keep its best mask for the next round
            best = result.low_res_masks[result.iou_predictions.argmax()][None]  # 1, 4h, 4w
            self.logits.put((image_id, prompt), best)
        return result

    def _prior_logits(self, image_id: str, prompt: frozenset) -> torch.Tensor | None:
        """Logits of the newest cached strict subset of `prompt`, one element fewer preferred."""
        candidates = [
            (len(key[1]), logits)
            for key, logits in self.logits.newest_first()
            if key[0] == image_id and key[1] < prompt
        ]
        if not candidates:
            return None
        one_fewer = [logits for size, logits in candidates if size == len(prompt) - 1]
        return one_fewer[0] if one_fewer else candidates[0][1]


def _prompt_key(points, point_labels, boxes) -> frozenset:
    """A hashable prompt set: ("point", x, y, label) and ("box", x0, y0, x1, y1) entries."""
    entries = set()
    if points is not None:
        for xy, label in zip(
            torch.as_tensor(points).reshape(-1, 2).tolist(),
            torch.as_tensor(point_labels).reshape(-1).tolist(),
            strict=True,
        ):
            entries.add(("point", round(xy[0], 3), round(xy[1], 3), int(label)))
    if boxes is not None:
        for box in torch.as_tensor(boxes).reshape(-1, 4).tolist():
            entries.add(("box", *(round(v, 3) for v in box)))
    return frozenset(entries)


def _content_hash(pixels: torch.Tensor) -> str:
    digest = hashlib.sha256(str(tuple(pixels.shape)).encode())
    digest.update(pixels.contiguous().numpy().tobytes())
    return digest.hexdigest()
