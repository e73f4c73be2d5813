"""Rollout videos: several worlds' episodes side by side, as MP4 or GIF."""

from __future__ import annotations

import os
import warnings

import imageio.v2 as imageio
import numpy as np

VIDEO_SUFFIXES = (".mp4", ".gif")


def tile_frames(frames: np.ndarray, scale: int = 4) -> np.ndarray:
    """(T, K, H, W, 3) uint8 -> (T, H*scale, K*W*scale, 3): worlds side by side, upscaled."""
    frames = np.asarray(frames, dtype=np.uint8)
    if frames.ndim != 5 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames shaped (T, K, H, W, 3), got {frames.shape}")
    t, k, h, w, _ = frames.shape
    tiled = frames.transpose(0, 2, 1, 3, 4).reshape(t, h, k * w, 3)
    return tiled.repeat(scale, axis=1).repeat(scale, axis=2)


def check_video_path(path: str) -> None:
    """Raises, before any work is done, for a video path `write_video` could not write: a
    format it lacks, an existing folder, or a place no file can be made."""
    if os.path.splitext(path)[1].lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"video path must end in {' or '.join(VIDEO_SUFFIXES)}, got {path!r}")
    if os.path.isdir(path):
        raise ValueError(f"video path {path!r} is a folder; name a file in it, e.g. "
                         f"{os.path.join(path, 'rollout.mp4')!r}")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):  # write_video makes the missing folders
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise ValueError(f"cannot write the video {path!r}: {parent} is not a writable folder")


def write_video(path: str, frames: np.ndarray, fps: int = 10, scale: int = 4) -> str:
    """Writes (T, K, H, W, 3) frames to ``path`` (.mp4 or .gif); returns the path."""
    check_video_path(path)
    suffix = os.path.splitext(path)[1].lower()
    tiled = tile_frames(frames, scale)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if suffix == ".gif":
        imageio.mimsave(path, list(tiled), duration=1000 / fps, loop=0)
    else:
        # imageio-ffmpeg starts ffmpeg by fork + exec. JAX warns of a deadlock at any fork of
        # its multithreaded process, but a child that only execs cannot deadlock.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"os\.fork\(\) was called", RuntimeWarning)
            # Even sizes for yuv420p; macro_block_size=1 keeps our exact size.
            imageio.mimsave(path, list(tiled), fps=fps, macro_block_size=1, codec="libx264",
                            pixelformat="yuv420p")
    return path
