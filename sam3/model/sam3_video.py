"""Sam3ImageOnVideoMultiGPU: the image model run over the frames of a clip, sharded across a frame group.

Frame t of a clip belongs to group rank t mod F (DESIGN.md "Frame sharding"). In training the data side
already hands each rank only its frames, so the forward is the image model's forward on those frames;
a rank with no frame (a clip shorter than the group) runs a placeholder frame so that it issues the same
collectives (its loss is given zero weight by the training step).

The model holds no distributed behaviour: gathers between the ranks of a group and the chunked,
prefetching inference schedule over whole videos are applied from outside
(`sam3.distributed.video_inference.VideoGroundingRunner`).
"""

from __future__ import annotations

import torch

from sam3.model.geometry_encoder import GeometryPrompts
from sam3.model.sam3_image import Sam3Image
from sam3.structures import ClipBatch, DetectorOutput


class Sam3ImageOnVideoMultiGPU(Sam3Image):
    """Multi-frame SAM3 detector whose frames are spread over the ranks of a frame group.

    Same parts and parameter names as `Sam3Image`, so image checkpoints load unchanged.
    """

    def forward(self, batch: ClipBatch, geometry: GeometryPrompts | None = None) -> DetectorOutput:
        """Runs backbone and grounding on the frames this rank holds.

        Returns the `DetectorOutput` over the batch's (frame, prompt) pairs. When the batch holds no
        frame, returns outputs for a zero placeholder frame with the first clip's prompts; the caller
        gives them zero weight (they keep every rank's collectives in step).
        """
        if batch.num_local_frames > 0:
            return super().forward(batch, geometry)
        images = torch.zeros(1, *batch.images.shape[1:], dtype=batch.images.dtype, device=batch.images.device)
        num_prompts = len(batch.prompts[0])
        vision = self.backbone.forward_image(images)
        text = self.backbone.forward_text(batch.prompts[0])
        slots = torch.zeros(num_prompts, dtype=torch.int64, device=images.device)
        text_idx = torch.arange(num_prompts, device=images.device)
        return self.forward_grounding(vision, text, slots, text_idx)
