"""Datasets: built-in splits (disjoint, documented sizes, values) and ImageFolder on PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from experiments import data


def _to_unit(array: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, C) -> float32 (C, H, W) in [-1, 1], the expected mapping."""
    return torch.from_numpy(array.astype(np.float32)).permute(2, 0, 1) / 127.5 - 1


# -- splits -------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 7, 100, 1797])
def test_splits_are_disjoint_and_cover_everything(n: int) -> None:
    parts = {s: data.split_indices(n, s) for s in ("train", "val", "test")}
    joined = torch.cat(list(parts.values()))
    assert sorted(joined.tolist()) == list(range(n))  # disjoint and complete
    assert len(parts["val"]) == len(parts["test"]) == n // 10
    assert torch.equal(data.split_indices(n, "all"), torch.arange(n))
    for part in parts.values():
        assert torch.equal(part, part.sort().values)


def test_split_rule_is_pinned_and_uses_no_global_rng() -> None:
    state = torch.get_rng_state()
    # Pinned so that a change of the rule (or of torch's randperm) is noticed.
    assert data.split_indices(1797, "test")[:6].tolist() == [0, 5, 7, 8, 16, 20]
    assert data.split_indices(100, "test").tolist() == [3, 5, 20, 21, 26, 29, 32, 54, 62, 95]
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize(
    ("name", "sizes", "shape"),
    [
        ("digits", {"train": 1439, "val": 179, "test": 179, "all": 1797}, (1, 32, 32)),
        ("faces", {"train": 80, "val": 10, "test": 10, "all": 100}, (1, 32, 32)),
    ],
)
def test_builtin_split_sizes_and_range(name: str, sizes: dict[str, int], shape: tuple) -> None:
    names: dict[str, list[str]] = {}
    for split, count in sizes.items():
        loaded = data.load_builtin_split(name, split)
        images = loaded.images
        assert images.shape == (count, *shape)
        assert images.dtype == torch.float32
        assert images.min() >= -1 and images.max() <= 1
        assert images.min() < -0.9 and images.max() > 0.5  # really spans the range
        names[split] = loaded.names
    parts = [set(names[s]) for s in ("train", "val", "test")]
    assert set.union(*parts) == set(names["all"])
    assert sum(len(p) for p in parts) == sizes["all"]


def test_digits_values_and_labels_match_scikit_learn() -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    native = data.load_builtin_split("digits", "test", size=8)
    index = [int(n.split("_")[1]) for n in native.names]
    assert index == data.split_indices(1797, "test").tolist()
    want = torch.from_numpy(digits.images[index]).float() / 8 - 1
    assert torch.allclose(native.images[:, 0], want)
    assert native.labels is not None
    assert native.labels.tolist() == digits.target[index].tolist()

    resized = data.load_builtin_split("digits", "test")
    assert resized.names == native.names
    assert torch.equal(resized.labels, native.labels)
    # Antialiased bicubic upsampling keeps each image's mean grey level.
    mean_32 = resized.images.mean(dim=(1, 2, 3))
    mean_8 = native.images.mean(dim=(1, 2, 3))
    assert (mean_32 - mean_8).abs().max() < 0.05


def test_faces_are_the_first_hundred_lfw_images() -> None:
    from skimage.data import lfw_subset

    faces = data.load_builtin_split("faces", "all", size=25, channels=3)
    assert faces.labels is None
    assert faces.images.shape == (100, 3, 25, 25)
    want = torch.from_numpy(lfw_subset()[:100]).float() * 2 - 1
    for c in range(3):
        assert torch.allclose(faces.images[:, c], want)


def test_builtin_loading_is_deterministic() -> None:
    first = data.load_builtin("faces", "val")
    assert torch.equal(first, data.load_builtin("faces", "val"))
    assert torch.equal(first, data.load_builtin_split("faces", "val").images)


def test_photos_splits_by_name_and_values() -> None:
    names = {s: data.load_builtin_split("photos", s, size=32).names for s in data.SPLITS}
    for split in ("train", "val", "test"):
        assert sorted(names[split]) == sorted(data.PHOTO_SPLITS[split])
    assert sorted(names["train"] + names["val"] + names["test"]) == sorted(names["all"])
    assert len(names["all"]) == len(set(names["all"])) == 10

    test = data.load_builtin_split("photos", "test", size=64)
    assert test.images.shape == (3, 3, 64, 64)
    # astronaut is square: only the bicubic resize applies, as PIL computes it.
    from skimage.data import astronaut

    resized = Image.fromarray(astronaut()).resize((64, 64), Image.Resampling.BICUBIC)
    want = _to_unit(np.asarray(resized))
    assert torch.allclose(test.images[test.names.index("astronaut")], want)


def test_grayscale_photo_is_repeated_to_rgb_and_channels_1_works() -> None:
    train = data.load_builtin_split("photos", "train", size=32)
    camera = train.images[train.names.index("camera")]
    assert torch.equal(camera[0], camera[1]) and torch.equal(camera[0], camera[2])
    gray = data.load_builtin("photos", "val", size=32, channels=1)
    assert gray.shape == (1, 1, 32, 32)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "mnist", "split": "train"}, "unknown built-in dataset 'mnist'"),
        ({"name": "digits", "split": "training"}, "unknown split 'training'"),
        ({"name": "digits", "split": "train", "size": 0}, "size must be a positive int"),
        ({"name": "digits", "split": "train", "channels": 2}, "channels must be 1"),
    ],
)
def test_builtin_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        data.load_builtin(**kwargs)


def test_builtin_dataset_names() -> None:
    assert data.builtin_datasets() == ["digits", "faces", "photos"]


# -- ImageFolder --------------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """PNGs: an exact-crop case (12x6 random RGB), a resize case (40x20 stripes), one in a
    subfolder with an upper-case extension, plus files that must be skipped."""
    rng = np.random.default_rng(0)
    exact = rng.integers(0, 256, size=(6, 12, 3), dtype=np.uint8)  # H 6, W 12
    Image.fromarray(exact).save(tmp_path / "a.png")
    stripes = np.zeros((20, 40, 3), dtype=np.uint8)  # H 20, W 40
    stripes[:, :10] = (255, 0, 0)
    stripes[:, 10:30] = (200, 100, 50)
    stripes[:, 30:] = (0, 0, 255)
    Image.fromarray(stripes).save(tmp_path / "b.png")
    (tmp_path / "sub").mkdir()
    Image.fromarray(np.full((6, 6), 30, dtype=np.uint8), mode="L").save(tmp_path / "sub" / "c.PNG")
    Image.fromarray(exact).save(tmp_path / ".hidden.png")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path, exact, stripes


def test_image_folder_lists_sorted_images_recursively(folder) -> None:
    root, _, _ = folder
    dataset = data.ImageFolder(root, size=6)
    assert dataset.names == ["a.png", "b.png", "sub/c.PNG"]
    assert len(dataset) == 3


def test_image_folder_centre_crop_without_resize(folder) -> None:
    root, exact, _ = folder
    dataset = data.ImageFolder(root, size=6)
    image = dataset[0]
    assert image.shape == (3, 6, 6) and image.dtype == torch.float32
    # The shorter side is already 6: only the crop applies, columns 3..8 of 12.
    assert torch.equal(image, _to_unit(exact[:, 3:9]))
    gray = data.ImageFolder(root, size=6, channels=1)[0]
    want = np.asarray(Image.fromarray(exact).convert("L"))[:, 3:9, None]
    assert torch.equal(gray, _to_unit(want))


def test_image_folder_resize_then_centre_crop(folder) -> None:
    root, _, _ = folder
    image = data.ImageFolder(root, size=10)[1]
    # 40x20 -> 20x10 (shorter side 10), crop columns 5..14: the middle stripe (original columns
    # 10..29, now 5..14) fills the crop; its inner columns see only that stripe.
    assert image.shape == (3, 10, 10)
    assert image.min() >= -1 and image.max() <= 1
    want = (torch.tensor([200.0, 100.0, 50.0]) / 127.5 - 1).view(3, 1, 1)
    assert torch.allclose(image[:, :, 2:8], want.expand(3, 10, 6), atol=1.5 / 127.5)
    # Grayscale files become RGB with equal channels.
    gray = data.ImageFolder(root, size=10)[2]
    assert torch.allclose(gray, torch.full((3, 10, 10), 30 / 127.5 - 1), atol=1.5 / 127.5)


@pytest.mark.parametrize(("height", "width", "size"), [(23, 37, 16), (41, 29, 9), (30, 30, 30)])
def test_image_folder_matches_the_torchvision_reference_pipeline(
    tmp_path: Path, height: int, width: int, size: int
) -> None:
    from torchvision import transforms

    array = np.random.default_rng(1).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    Image.fromarray(array).save(tmp_path / "x.png")
    reference = transforms.Compose(
        [
            transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(size),
            transforms.PILToTensor(),
        ]
    )(Image.fromarray(array))
    got = data.ImageFolder(tmp_path, size=size)[0]
    assert torch.equal(got, reference.float() / 127.5 - 1)


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.ImageFolder(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("text")
    with pytest.raises(FileNotFoundError, match="no image files"):
        data.ImageFolder(tmp_path)
    with pytest.raises(NotADirectoryError, match="not a folder"):
        data.ImageFolder(tmp_path / "notes.txt")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    dataset = data.ImageFolder(tmp_path, size=8)
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.png"):
        dataset[0]
    with pytest.raises(ValueError, match="channels must be 1"):
        data.ImageFolder(tmp_path, channels=4)
