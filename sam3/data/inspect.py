"""Dataset validator: checks every record of an annotation file (and its frame files) and prints counts.

    python -m sam3.data.inspect ANNOTATIONS.json [--frames-root DIR] [--format auto] [--skip-bad-records]

Exits with status 1 and the named error (file, record, field) on the first bad record, or with
`--skip-bad-records` reports how many were skipped. Frame files are checked (existence and size,
reading only their headers) when `--frames-root` is given; video files by their frame count (against the
annotations' `length`) and size, read from the container without decoding.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sam3.data.frames import check_frame_file, open_video_file
from sam3.data.index import DataError, DatasetIndex
from sam3.data.readers import FORMATS, load_annotations


def check_frames(index: DatasetIndex, frames_root: str | Path) -> int:
    """Checks every frame file of `index` under `frames_root`; returns the number checked."""
    checked = 0
    for video in index.videos:
        if video.video_file is not None:  # its frame count and size, from the container (no decoding)
            open_video_file(frames_root, video, index.source).close()
            checked += video.length
            continue
        for frame_idx in range(video.length):
            check_frame_file(frames_root, video, frame_idx, index.source)
            checked += 1
    return checked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("annotations", help="annotation JSON (SA-Co/VEval, YouTube-VIS or COCO)")
    parser.add_argument("--frames-root", default=None, help="folder the frame file names are relative to")
    parser.add_argument("--format", default="auto", choices=("auto", *FORMATS))
    parser.add_argument("--skip-bad-records", action="store_true", help="skip and count bad records")
    args = parser.parse_args(argv)
    try:
        index = load_annotations(
            args.annotations, format=args.format, on_error="skip" if args.skip_bad_records else "raise"
        )
        frames_checked = None if args.frames_root is None else check_frames(index, args.frames_root)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.annotations} ({index.format})")
    for name, value in index.counts().items():
        print(f"  {name:<16}{value}")
    if frames_checked is not None:
        print(f"  {'frame files ok':<16}{frames_checked}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
