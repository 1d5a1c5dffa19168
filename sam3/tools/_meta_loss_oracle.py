"""Oracle side of `sam3.tools.check_loss_parity`: Meta's released training loss on stored problems.

Runs only in the interpreter of a virtualenv holding Meta's `sam3==0.1.4` with its training code,
started by `check_loss_parity` with `python -I` (so neither this directory nor the working directory
is on `sys.path`). There `import sam3` is Meta's package: this file imports nothing of ours, and the
two sides exchange plain tensors through `torch.save` files, loaded with `weights_only=True`.

Meta's modules and weights are those of its released roboflow fine-tune config
(`sam3/train/configs/roboflow_v100/roboflow_v100_full_ft_100_images.yaml`), plus the mask loss of that
config's commented segmentation block with its default dense loss (`num_sample_points=None`). Each
layer's one-to-one indices are computed before the loss, as Meta's model does. The Triton focal loss
is swapped for Meta's own torch path (CPU), and a one-process gloo group serves the wrapper's
all-reduce of the box count.

    python -I _meta_loss_oracle.py [--threads N] PROBLEM.pt [PROBLEM.pt ...]

For each `PROBLEM.pt`, writes `PROBLEM.meta.pt`: `strict/<key>` and `weak/<key>` (float64 scalars:
every entry of Meta's loss dict, `core_loss` included, with `IABCEMdetr(weak_loss=False)` and
`weak_loss=True`), `o2o/<layer>` and `o2m_aux/<layer>` (the one-to-one assignments of the o2o layers
and of the o2m auxiliary layers) and `o2m` (the final o2m layer's one-to-many assignment), each
assignment (3, M) int64 rows (pair, query, packed target index).
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist

# The settings of the released roboflow fine-tune config.
NUM_QUERIES_PAD = 200
MATCHER = {
    "focal": True,
    "cost_class": 2.0,
    "cost_bbox": 5.0,
    "cost_giou": 2.0,
    "alpha": 0.25,
    "gamma": 2,
    "stable": False,
}
O2M_MATCHER = {"alpha": 0.3, "threshold": 0.4, "topk": 4}
O2M_WEIGHT = 2.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("problems", nargs="+", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")

    from sam3.train.loss import loss_fns

    # CPU: Meta's torch implementation instead of its Triton kernel.
    loss_fns.sigmoid_focal_loss = partial(loss_fns.sigmoid_focal_loss, triton=False)

    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "gloo_store"
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
        try:
            for path in args.problems:
                problem = torch.load(path, weights_only=True)
                results = run(problem)
                torch.save(results, path.with_suffix(".meta.pt"))
        finally:
            dist.destroy_process_group()


def build_wrapper(weak_loss: bool):
    """Meta's loss wrapper with the roboflow config's modules and weights, plus dense masks."""
    from sam3.train.loss.loss_fns import Boxes, IABCEMdetr, Masks
    from sam3.train.loss.sam3_loss import Sam3LossWrapper
    from sam3.train.matcher import BinaryHungarianMatcherV2, BinaryOneToManyMatcher

    return Sam3LossWrapper(
        matcher=BinaryHungarianMatcherV2(**MATCHER),
        o2m_matcher=BinaryOneToManyMatcher(**O2M_MATCHER),
        o2m_weight=O2M_WEIGHT,
        use_o2m_matcher_on_o2m_aux=False,
        scale_by_find_batch_size=True,
        loss_fns_find=[
            Boxes(weight_dict={"loss_bbox": 5.0, "loss_giou": 2.0}),
            IABCEMdetr(
                weak_loss=weak_loss,
                weight_dict={"loss_ce": 20.0, "presence_loss": 20.0},
                pos_weight=10.0,
                alpha=0.25,
                gamma=2,
                use_presence=True,
                pos_focal=False,
                pad_n_queries=NUM_QUERIES_PAD,
                pad_scale_pos=1.0,
            ),
            Masks(
                focal_alpha=0.25,
                focal_gamma=2,
                weight_dict={"loss_mask": 200.0, "loss_dice": 10.0},
                compute_aux=False,
            ),
        ],
    )


def meta_targets(problem: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Meta's batched target dict: padded boxes (visible targets first in each pair) and packed ones."""
    from sam3.model.box_ops import box_cxcywh_to_xyxy

    boxes_padded, num_boxes = problem["boxes_padded"], problem["num_boxes"]
    visible = torch.arange(boxes_padded.shape[1])[None] < num_boxes[:, None]
    boxes = boxes_padded[visible]
    return {
        "boxes": boxes,
        "boxes_xyxy": box_cxcywh_to_xyxy(boxes),
        "boxes_padded": boxes_padded,
        "num_boxes": num_boxes,
        "object_ids_padded": problem["object_ids_padded"],
        "is_exhaustive": problem["is_exhaustive"],
        "masks": problem["masks"],
        "is_valid_mask": torch.ones(len(boxes), dtype=torch.bool),
    }


def meta_outputs(problem: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """One output dict per decoder layer, keyed as Meta's model keys them in training."""
    from sam3.model.box_ops import box_cxcywh_to_xyxy

    layers = []
    for d in range(problem["pred_logits"].shape[0]):
        layer = {"presence_logit_dec": problem["presence_logit_dec"][d]}
        for suffix in ("", "_o2m"):
            boxes = problem["pred_boxes" + suffix][d]
            layer["pred_logits" + suffix] = problem["pred_logits" + suffix][d]
            layer["pred_boxes" + suffix] = boxes
            layer["pred_boxes_xyxy" + suffix] = box_cxcywh_to_xyxy(boxes)
        layers.append(layer)
    layers[-1]["pred_masks"] = problem["pred_masks"]
    layers[-1]["pred_masks_o2m"] = problem["pred_masks_o2m"]
    return layers


def o2m_view(layer: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The o2m outputs of a layer under the o2o key names."""
    return {k.removesuffix("_o2m"): v for k, v in layer.items() if k.endswith("_o2m")}


def as_rows(indices, num_boxes: torch.Tensor) -> torch.Tensor:
    """Meta's (pair, query, target) index triple as (3, M) int64; a None target index means the
    targets in packed order."""
    pair_idx, query_idx, target_idx = indices
    if target_idx is None:
        assert len(pair_idx) == int(num_boxes.sum()), "every visible target is matched when Q >= targets"
        target_idx = torch.arange(len(pair_idx))
    return torch.stack([pair_idx.long(), query_idx.long(), target_idx.long()])


@torch.no_grad()
def run(problem: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from sam3.model.model_misc import SAM3Output

    targets = meta_targets(problem)
    results: dict[str, torch.Tensor] = {}
    for round_name, weak_loss in (("strict", False), ("weak", True)):
        wrapper = build_wrapper(weak_loss)
        layers = meta_outputs(problem)
        for layer in layers:  # the model computes the one-to-one indices before the loss
            layer["indices"] = wrapper.matcher(layer, targets)
        nested = layers[-1]
        nested["aux_outputs"] = layers[:-1]
        losses = wrapper(SAM3Output([[nested]]), [targets])
        for key, value in losses.items():
            results[f"{round_name}/{key}"] = torch.as_tensor(value, dtype=torch.float64).reshape(())

    # The assignments, as the wrapper computes them (the same calls on the same inputs).
    wrapper, layers, num_boxes = build_wrapper(weak_loss=False), meta_outputs(problem), targets["num_boxes"]
    for d, layer in enumerate(layers):
        results[f"o2o/{d}"] = as_rows(wrapper.matcher(layer, targets), num_boxes)
    for d, layer in enumerate(layers[:-1]):
        results[f"o2m_aux/{d}"] = as_rows(wrapper.matcher(o2m_view(layer), targets), num_boxes)
    results["o2m"] = as_rows(wrapper.o2m_matcher(o2m_view(layers[-1]), targets), num_boxes)
    return results


if __name__ == "__main__":
    main()
