"""Rollout videos: tiling and the MP4/GIF files."""

import os
import warnings

import imageio.v2 as imageio
import jax
import numpy as np
import pytest

from holdjax.video import tile_frames, write_video


def episode(t=3, k=2, h=4, w=6) -> np.ndarray:
    """(T, K, H, W, 3) frames whose value names (step, world)."""
    frames = np.zeros((t, k, h, w, 3), np.uint8)
    for step in range(t):
        for world in range(k):
            frames[step, world] = 40 * step + 100 * world
    return frames


def test_tile_frames_puts_worlds_side_by_side_upscaled():
    tiled = tile_frames(episode(), scale=2)
    assert tiled.shape == (3, 8, 24, 3)
    for step in range(3):
        np.testing.assert_array_equal(tiled[step, :, :12], 40 * step)  # world 0, left
        np.testing.assert_array_equal(tiled[step, :, 12:], 40 * step + 100)  # world 1, right
    with pytest.raises(ValueError, match=r"expected frames shaped \(T, K, H, W, 3\)"):
        tile_frames(np.zeros((3, 4, 6, 3), np.uint8))


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_write_video_files_read_back(tmp_path, suffix):
    path = str(tmp_path / "videos" / f"rollout{suffix}")
    jax.devices()  # JAX warns at a fork once a backend is up (as in training); the MP4 writer forks
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert write_video(path, episode(), scale=2) == path
    assert not [w for w in caught if "fork" in str(w.message)]  # the MP4 writer's ffmpeg
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)  # the reader's ffmpeg
        frames = np.stack(imageio.mimread(path))
    assert frames.shape[:3] == (3, 8, 24)
    # Lossy MP4 keeps the worlds' brightness apart; the GIF keeps it exactly.
    left, right = frames[..., :12, :3].mean(axis=(1, 2, 3)), frames[..., 12:, :3].mean(
        axis=(1, 2, 3))
    np.testing.assert_allclose(left, [0, 40, 80], atol=0 if suffix == ".gif" else 6)
    np.testing.assert_allclose(right, [100, 140, 180], atol=0 if suffix == ".gif" else 6)


def test_write_video_rejects_other_formats(tmp_path):
    with pytest.raises(ValueError, match=r"video path must end in \.mp4 or \.gif"):
        write_video(str(tmp_path / "rollout.avi"), episode())
    assert not os.path.exists(tmp_path / "rollout.avi")


def test_evaluate_rejects_a_video_format_before_it_evaluates(tmp_path, capsys, monkeypatch):
    from holdjax import evaluate

    monkeypatch.setattr(evaluate, "evaluate_run", lambda *a: pytest.fail("evaluated"))
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main([f"--run={tmp_path}", "--video=eval.avi"])
    assert exit_info.value.code == 2
    assert "--video: video path must end in .mp4 or .gif" in capsys.readouterr().err
