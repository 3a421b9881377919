"""Tests of the one KITTI benchmark crop (dm_lightning.data.crops) and the one folder-or-tar
reader (dm_lightning.data.store)."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from dm_lightning.data.crops import kitti_benchmark_crop
from dm_lightning.data.store import FileStore, locate


def _benchmarks_crop(image: np.ndarray) -> np.ndarray:
    """The former dm_lightning.data.benchmarks.kitti_benchmark_crop, verbatim (minus errors)."""
    height, width = image.shape[:2]
    top, left = height - 352, (width - 1216) // 2
    return image[top : top + 352, left : left + 1216]


def _convert_crop(array: np.ndarray, height: int = 352, width: int = 1216) -> np.ndarray:
    """The former dm_lightning.data.convert.kitti_benchmark_crop, verbatim (minus errors)."""
    h, w = array.shape[:2]
    top, left = h - height, (w - width) // 2
    return array[top:, left : left + width]


@pytest.mark.parametrize("shape", [(375, 1242), (375, 1241), (352, 1216), (376, 1217), (370, 1224)])
@pytest.mark.parametrize("channels", [None, 3])
def test_kitti_crop_is_both_former_crops(shape: tuple[int, int], channels: int | None) -> None:
    full = shape + ((channels,) if channels else ())
    array = np.random.default_rng(0).integers(0, 1 << 16, full).astype(np.uint16)
    crop = kitti_benchmark_crop(array)
    assert crop.shape == (352, 1216) + full[2:]
    assert crop.dtype == array.dtype and np.shares_memory(crop, array)  # a view, as before
    np.testing.assert_array_equal(crop, _benchmarks_crop(array))
    np.testing.assert_array_equal(crop, _convert_crop(array))
    # Odd margin: floor, e.g. 1241 -> left 12.
    assert np.array_equal(crop[0, 0], array[shape[0] - 352, (shape[1] - 1216) // 2])


def test_kitti_crop_other_size_and_errors() -> None:
    array = np.arange(10 * 9).reshape(10, 9)
    np.testing.assert_array_equal(kitti_benchmark_crop(array, 4, 4), _convert_crop(array, 4, 4))
    with pytest.raises(ValueError, match="cannot crop 352x1216 from an image of 351x1300"):
        kitti_benchmark_crop(np.zeros((351, 1300)))
    with pytest.raises(ValueError, match="cannot crop 352x1216 from an image of 400x1215"):
        kitti_benchmark_crop(np.zeros((400, 1215, 3)))


@pytest.fixture()
def roots(tmp_path: Path) -> dict[str, Path]:
    """A folder a/x.txt, a/y.txt, z.txt; its tar with ./ members; a tar of it nested under
    data/; and a tar with a deeper prefix that also has a second copy of x.txt."""
    folder = tmp_path / "root"
    (folder / "a").mkdir(parents=True)
    for rel, text in {"a/x.txt": "x", "a/y.txt": "y", "z.txt": "z"}.items():
        (folder / rel).write_text(text)
    out = {"folder": folder}
    for variant, arcname in {"tar": ".", "nested": "data"}.items():
        out[variant] = tmp_path / f"{variant}.tar"
        with tarfile.open(out[variant], "w") as tar:
            tar.add(folder, arcname=arcname)
    out["deep"] = tmp_path / "deep.tar"
    with tarfile.open(out["deep"], "w") as tar:
        tar.add(folder / "a" / "x.txt", arcname="p/q/a/x.txt")
        tar.add(folder / "z.txt", arcname="p/q/w.txt")
        tar.add(folder / "a" / "y.txt", arcname="other/a/x.txt")
    return out


def test_find_exact_and_anywhere(roots: dict[str, Path]) -> None:
    names = ["a/x.txt", "z.txt", "missing.txt"]
    for variant in ("folder", "tar", "nested"):
        store = FileStore(roots[variant])
        found = store.find(names)
        assert sorted(found) == ["a/x.txt", "z.txt"]
        assert [store.read(found[n]) for n in sorted(found)] == [b"x", b"z"]
        assert store.names() == sorted(store.names())
    nested = FileStore(roots["nested"])
    assert nested.find(["a/x.txt"]) == {"a/x.txt": "data/a/x.txt"}
    deep = FileStore(roots["deep"])
    assert deep.find(["a/x.txt"]) == {}  # two top folders (p/, other/): no prefix
    # Anywhere: any leading folders; the first member in archive order wins.
    assert deep.find(["a/x.txt", "w.txt", "q/w.txt"], anywhere=True) == {
        "a/x.txt": "p/q/a/x.txt",
        "q/w.txt": "p/q/w.txt",  # the longest name a member ends with takes it
    }
    assert deep.read("p/q/a/x.txt") == b"x"
    assert FileStore(roots["folder"]).find(["x.txt"], anywhere=True) == {}  # folders: exact


def test_locate_over_several_roots(roots: dict[str, Path]) -> None:
    stores = [FileStore(roots["deep"]), FileStore(roots["folder"])]
    found = locate(stores, ["a/x.txt", "a/y.txt", "nothing"], anywhere=True)
    assert sorted(found) == ["a/x.txt", "a/y.txt"]
    assert found["a/x.txt"][0] is stores[0] and found["a/y.txt"][0] is stores[1]
    assert [store.read(rel) for store, rel in found.values()] == [b"x", b"y"]
    assert found["a/x.txt"][0].describe(found["a/x.txt"][1]) == f"{roots['deep']}:p/q/a/x.txt"
    # Pickles without its handle (pool workers reopen their own).
    store, rel = pickle.loads(pickle.dumps(found["a/x.txt"]))
    assert store.read(rel) == b"x"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FileStore(roots["folder"] / "nope")
