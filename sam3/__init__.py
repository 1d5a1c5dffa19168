"""sam3-video: fine-tune SAM3-style promptable concept segmentation on video grounding data."""
