"""sam3-video: fine-tune SAM3-style promptable concept segmentation on video grounding data.

Public API (imported on first use, so `import sam3` has no side effects and stays cheap):
    sam3.build_model(name, *, video=False, checkpoint=None, overrides=())   # see sam3.model_builder
"""

__all__ = ["build_model"]


def __getattr__(name: str):
    if name == "build_model":
        from sam3.model_builder import build_model

        return build_model
    raise AttributeError(f"module 'sam3' has no attribute {name!r}")
