"""Video decoding for frame-sharded data: PyAV (`sam3.data.video_file.VideoFile`) against torchcodec.

    python bench/video_decode.py [--frames 240] [--size 256] [--gop 12] [--repeats 3]

Writes a synthetic shapes video to a temporary .mp4, then times, per decoder: opening the file, one
rank's frames of a 2-rank frame group (every other frame), and 8 scattered frames (seek + decode).
torchcodec is timed only where it loads (it needs the system's FFmpeg libraries).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sam3.data.synthetic import synthetic_video
from sam3.data.video_file import VideoFile, write_video


def _time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=240)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--gop", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a data-loader worker; intra-op threads only contend here
    frames, _ = synthetic_video(0, "train", 0, args.frames, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "video.mp4"
        write_video(path, (f.permute(1, 2, 0).numpy() for f in frames), fps=24, gop_size=args.gop)
        rank_frames = list(range(1, args.frames, 2))
        scattered = [int(i * args.frames / 8) + 3 for i in range(8)]
        print(f"{args.frames} frames {args.size}x{args.size}, H.264 GOP {args.gop}; median of {args.repeats}, ms")

        def pyav(indices):
            with VideoFile(path) as video:
                video.read(indices)

        rows = {"PyAV": [_time(lambda: pyav([]), args.repeats), _time(lambda: pyav(rank_frames), args.repeats)]}
        rows["PyAV"].append(_time(lambda: pyav(scattered), args.repeats))
        try:
            from torchcodec.decoders import VideoDecoder

            def codec(indices):
                decoder = VideoDecoder(str(path), seek_mode="exact")
                if indices:
                    decoder.get_frames_at(indices)

            rows["torchcodec"] = [_time(lambda x=x: codec(x), args.repeats) for x in ([], rank_frames, scattered)]
        except (ImportError, OSError, RuntimeError) as e:
            print(f"torchcodec unavailable: {str(e).splitlines()[0]}")
        print(f"{'decoder':<12}{'open':>8}{'rank 1 of 2':>14}{'8 scattered':>14}")
        for name, (open_s, rank_s, scat_s) in rows.items():
            print(f"{name:<12}{open_s * 1e3:8.1f}{rank_s * 1e3:14.1f}{scat_s * 1e3:14.1f}")


if __name__ == "__main__":
    main()
