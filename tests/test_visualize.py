"""The one colouring of depth and error maps (dm_lightning.visualize)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib import colormaps

from dm_lightning.visualize import colorize, colorize_depth


def test_depth_colours_near_warm_far_cool_with_invalid_black():
    near = torch.tensor([[[1.0, 0.0, 0.5, float("nan")]]])  # (1, 1, 4): near, far, middle, NaN
    invalid = np.array([[False, False, True, False]])
    rgb = colorize_depth(near, invalid=invalid)
    assert rgb.shape == (1, 4, 3) and rgb.dtype == np.uint8
    red, green, blue = (int(c) for c in rgb[0, 0])
    assert red > 150 and blue < 100, rgb[0, 0]  # near: warm
    red, green, blue = (int(c) for c in rgb[0, 1])
    assert blue > 120 and red < 100, rgb[0, 1]  # far: cool
    assert rgb[0, 2].tolist() == [0, 0, 0] and rgb[0, 3].tolist() == [0, 0, 0]


def test_fixed_range_clips_and_matches_the_colormap():
    values = np.array([[-1.0, 0.0, 2.0, 4.0, 9.0]], dtype=np.float32)
    rgb = colorize(values, vmin=0.0, vmax=4.0, cmap="inferno")
    expected = colormaps["inferno"](np.array([0.0, 0.0, 0.5, 1.0, 1.0]), bytes=True)[:, :3]
    assert np.array_equal(rgb[0], expected)


def test_bad_range_and_shape_are_refused():
    with pytest.raises(ValueError, match="vmax"):
        colorize(np.zeros((2, 2)), vmin=1.0, vmax=1.0)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        colorize(np.zeros((2, 2, 2)))
