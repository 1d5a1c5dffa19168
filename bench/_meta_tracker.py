"""Meta's side of `bench/tracker.py`: times Meta's `sam3==0.1.4` tracker on the same seeded weights and
synthetic features. Run by `bench/tracker.py` in the oracle interpreter (never imported by our code).

    /path/to/oracle/python bench/_meta_tracker.py --shared-tools ../shared/tools [--device cpu] [--threads 2]

A worker: one JSON request per stdin line, {"image_size", "frames", "video_hw", "clicks", "timed"},
answered by one JSON line on stdout, {"seconds", "timed_frames", "fps", "shim"} ({} when not timed) or
{"error"}. Frames 0 (prompted) and 1 (warm-up) are not timed. The first
line written is {"ready": ...} (or {"error"} when the oracle package or the shared tools are missing).

Weights and features come from `official_reference.py` of the shared tools: `build_seeded_tracker`
(SEEDED_INIT_V1 on the released names) and FIXED_FEATURES_V1 through Meta's neck and `forward_image`.
On CPU the package needs that script's `CudaToCpu` function mode throughout (propagation too: it asks for
CUDA tensors); the mode adds a little Python overhead to every torch call of Meta's side (`shim`).
"""

from __future__ import annotations

import argparse
import contextlib
import time

from _oracle_worker import serve


class MetaTrackerBench:
    """Seeded trackers and their per-frame features, built once per image size."""

    def __init__(self, ref, device: str, seed: int) -> None:
        import torch

        self.torch = torch
        self.ref = ref
        self.device = torch.device(device)
        self.seed = seed
        self.trackers: dict[int, tuple] = {}

    def shim(self):
        return self.ref.CudaToCpu() if self.device.type == "cpu" else contextlib.nullcontext()

    def tracker(self, image_size: int, num_frames: int):
        torch = self.torch
        if image_size not in self.trackers:
            with self.shim():
                tracker, trunk, _, _ = self.ref.build_seeded_tracker(self.seed, image_size)
            self.trackers[image_size] = (tracker.to(self.device), trunk, {})
        tracker, trunk, cached = self.trackers[image_size]
        with self.shim(), torch.inference_mode():
            for frame in range(num_frames):
                if frame not in cached:
                    trunk.frame = frame
                    image = torch.zeros(1, 3, image_size, image_size, device=self.device)
                    cached[frame] = (image, {"tracker_backbone_out": tracker.forward_image(image)})
        return tracker, {f: cached[f] for f in range(num_frames)}

    def run(self, request: dict) -> dict:
        tracker, cached = self.tracker(request["image_size"], request["frames"])
        state = self._session(tracker, cached, request)
        with self.shim():
            result = self._propagate(tracker, state, request["frames"])
        return {**result, "shim": self.device.type == "cpu"} if request.get("timed", True) else {}

    def _session(self, tracker, cached: dict, request: dict):
        """A new session with one click per object on frame 0."""
        torch = self.torch
        height, width = request["video_hw"]
        with self.shim(), torch.inference_mode():
            # storage on the compute device: on CPU that is offload_state_to_cpu (its default names "cuda")
            state = tracker.init_state(
                video_height=height,
                video_width=width,
                num_frames=request["frames"],
                cached_features=cached,
                offload_state_to_cpu=self.device.type == "cpu",
            )
            for obj_id, (x, y) in enumerate(request["clicks"], start=1):
                tracker.add_new_points_or_box(
                    state,
                    frame_idx=0,
                    obj_id=obj_id,
                    points=torch.tensor([[x, y]], dtype=torch.float32),
                    labels=torch.tensor([1], dtype=torch.int32),
                )
        return state

    def _propagate(self, tracker, state, num_frames: int) -> dict:
        """Frames 0 (prompted) and 1 (warm-up) untimed, then the rest timed."""
        torch = self.torch
        frames = tracker.propagate_in_video(
            state,
            start_frame_idx=0,
            max_frame_num_to_track=None,
            reverse=False,
            tqdm_disable=True,
            propagate_preflight=True,
        )
        with torch.inference_mode():
            start, seen = time.perf_counter(), 0
            for frame_idx, *_ in frames:
                seen += 1
                if frame_idx == 1:
                    self._sync()
                    start = time.perf_counter()
            self._sync()
            seconds = time.perf_counter() - start
        if seen != num_frames:
            raise AssertionError(f"propagated {seen} of {num_frames} frames")
        if num_frames < 3:  # a warm-up session
            return {}
        timed = num_frames - 2
        return {"seconds": seconds, "timed_frames": timed, "fps": timed / seconds}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    serve(parser, lambda ref, args: MetaTrackerBench(ref, args.device, args.seed).run)


if __name__ == "__main__":
    main()
