"""Datasets as tensors in [-1, 1], shape (C, H, W) per image (docs/evaluation.md).

``ImageFolder`` follows the evaluation protocol (docs/evaluation.md): resize the
shorter side to ``size`` (bicubic, antialiased), centre-crop ``size x size``, scale to [-1, 1].

Built-in datasets ship inside installed packages, so they work offline:

- ``digits``: scikit-learn ``load_digits()``, 1,797 grayscale 8x8 digits (0..16) with labels;
  scaled to [-1, 1] and resized bicubically (antialiased, clipped to [-1, 1]) to 32x32 by default.
- ``faces``: scikit-image ``data.lfw_subset()``, its first 100 images (the faces; the other 100
  are non-faces), grayscale 25x25 in [0, 1]; scaled and resized like ``digits``, 32x32 default.
- ``photos``: the natural photographs of scikit-image (``PHOTOS_SKIMAGE``) and scikit-learn's
  ``load_sample_images()`` (china, flower); resized and centre-cropped like ``ImageFolder``,
  256x256 and 3 channels by default (grayscale photographs are repeated to 3 channels).

Split rule (deterministic, the splits never overlap and together cover every item):

- ``digits`` and ``faces``: the permutation
  ``torch.randperm(N, generator=torch.Generator().manual_seed(SPLIT_SEED))`` on the CPU; with
  ``n = N // 10`` its first ``n`` entries are ``test``, the next ``n`` are ``val`` and the rest
  (about 80%) are ``train``. Each split lists its items in their original order.
  Sizes (train / val / test): digits 1439 / 179 / 179, faces 80 / 10 / 10.
- ``photos``: by name, ``PHOTO_SPLITS`` (test: astronaut, coffee, china; val: chelsea; train:
  the other six).
- ``all`` is every item in the original order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SPLITS = ("train", "val", "test", "all")
SPLIT_SEED = 20240601
PHOTOS_SKIMAGE = (
    "astronaut",
    "camera",
    "chelsea",
    "coffee",
    "coins",
    "hubble_deep_field",
    "moon",
    "rocket",
)
PHOTOS_SKLEARN = ("china", "flower")
PHOTO_SPLITS = {
    "test": ("astronaut", "coffee", "china"),
    "val": ("chelsea",),
    "train": ("camera", "coins", "hubble_deep_field", "moon", "rocket", "flower"),
}
# name -> (default size, default channels)
_DEFAULTS = {"digits": (32, 1), "faces": (32, 1), "photos": (256, 3)}


class ImageFolder(Dataset):
    """Images under ``root`` (recursive, sorted), each as a float32 ``(C, size, size)`` tensor.

    ``names`` holds the paths relative to ``root`` (POSIX style), stable ids for outputs.
    Hidden files (names starting with ".") are skipped.
    """

    def __init__(self, root: str | Path, size: int = 256, channels: int = 3) -> None:
        self.root = Path(root)
        self.size = _check_size(size)
        self.channels = _check_channels(channels)
        if not self.root.exists():
            raise FileNotFoundError(f"ImageFolder: folder {self.root} does not exist")
        if not self.root.is_dir():
            raise NotADirectoryError(f"ImageFolder: {self.root} is not a folder")
        self.paths = sorted(
            (
                p
                for p in self.root.rglob("*")
                if p.suffix.lower() in IMAGE_EXTENSIONS
                and not any(part.startswith(".") for part in p.relative_to(self.root).parts)
                and p.is_file()
            ),
            key=lambda p: p.relative_to(self.root).as_posix(),
        )
        if not self.paths:
            raise FileNotFoundError(
                f"ImageFolder: no image files ({', '.join(IMAGE_EXTENSIONS)}) under {self.root}"
            )
        self.names = [p.relative_to(self.root).as_posix() for p in self.paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        from PIL import Image

        path = self.paths[index]
        try:
            with Image.open(path) as image:
                return _pil_to_tensor(image, self.size, self.channels)
        except OSError as err:  # includes PIL's UnidentifiedImageError
            raise ValueError(f"ImageFolder: cannot read image {path}: {err}") from err


@dataclass(frozen=True)
class BuiltinSplit:
    """One split of a built-in dataset: ``images`` (N, C, H, W) in [-1, 1], float32.

    ``names`` are stable ids (``digits_0042`` with the index in the source dataset, or the
    photograph's name); ``labels`` are the digit classes (int64) for ``digits``, else None.
    """

    images: torch.Tensor
    names: list[str]
    labels: torch.Tensor | None


def builtin_datasets() -> list[str]:
    """Names accepted by ``load_builtin``."""
    return list(_DEFAULTS)


def load_builtin(
    name: str, split: str, size: int | None = None, channels: int | None = None
) -> torch.Tensor:
    """Images of a built-in dataset split, ``(N, C, H, W)`` float32 in [-1, 1].

    ``split`` is required so that no caller mixes training and test images by accident.
    ``size`` and ``channels`` default per dataset (digits, faces: 32 and 1; photos: 256 and 3).
    """
    return load_builtin_split(name, split, size, channels).images


def load_builtin_split(
    name: str, split: str, size: int | None = None, channels: int | None = None
) -> BuiltinSplit:
    """Like ``load_builtin``, with the items' names and (for digits) labels."""
    if name not in _DEFAULTS:
        raise ValueError(f"unknown built-in dataset {name!r}; choose one of {builtin_datasets()}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    default_size, default_channels = _DEFAULTS[name]
    size = _check_size(default_size if size is None else size)
    channels = _check_channels(default_channels if channels is None else channels)
    if name == "photos":
        return _load_photos(split, size, channels)

    if name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.from_numpy(digits.images).float() / 16.0
        labels = torch.from_numpy(digits.target).long()
    else:
        from skimage.data import lfw_subset

        images = torch.from_numpy(lfw_subset()[:100]).float()
        labels = None
    index = split_indices(images.shape[0], split)
    images = _resize_square(images[index].unsqueeze(1) * 2 - 1, size)
    return BuiltinSplit(
        images=images.expand(-1, channels, -1, -1).contiguous(),
        names=[f"{name}_{i:04d}" for i in index.tolist()],
        labels=None if labels is None else labels[index],
    )


def split_indices(n: int, split: str) -> torch.Tensor:
    """Sorted item indices of ``split`` among ``n`` items (the seeded-permutation rule above)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    if split == "all":
        return torch.arange(n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    k = n // 10
    part = {"test": perm[:k], "val": perm[k : 2 * k], "train": perm[2 * k :]}[split]
    return part.sort().values


def _load_photos(split: str, size: int, channels: int) -> BuiltinSplit:
    """The named photographs of ``split``, resized and centre-cropped like ``ImageFolder``."""
    from PIL import Image

    names = [
        n for n in PHOTOS_SKIMAGE + PHOTOS_SKLEARN if split == "all" or n in PHOTO_SPLITS[split]
    ]
    tensors = [_pil_to_tensor(Image.fromarray(_photo_array(n)), size, channels) for n in names]
    return BuiltinSplit(images=torch.stack(tensors), names=names, labels=None)


def _photo_array(name: str) -> np.ndarray:
    """One photograph as a uint8 array (H, W) or (H, W, 3), from the package that ships it."""
    if name in PHOTOS_SKLEARN:
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")
    from skimage import data

    return getattr(data, name)()


def _pil_to_tensor(image: Image.Image, size: int, channels: int) -> torch.Tensor:
    """Resize the shorter side to ``size`` (bicubic, antialiased), centre-crop, map to [-1, 1].

    The same pixels as torchvision's ``Resize(size, BICUBIC)`` + ``CenterCrop(size)`` on a PIL
    image (the reference pipeline), without importing torchvision.
    """
    import numpy as np
    from PIL import Image

    image = image.convert("RGB" if channels == 3 else "L")
    width, height = image.size
    if width <= height:
        new_size = (size, int(size * height / width))
    else:
        new_size = (int(size * width / height), size)
    if new_size != image.size:
        # PIL widens the kernel when downscaling, i.e. it antialiases.
        image = image.resize(new_size, Image.Resampling.BICUBIC)
    left = round((new_size[0] - size) / 2)
    top = round((new_size[1] - size) / 2)
    image = image.crop((left, top, left + size, top + size))
    array = np.array(image, dtype=np.float32).reshape(size, size, channels)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous() / 127.5 - 1.0


def _resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic (antialiased) resize of square ``(N, 1, h, h)`` images, clipped to [-1, 1]."""
    if images.shape[-1] == size:
        return images
    resized = F.interpolate(
        images, size=(size, size), mode="bicubic", align_corners=False, antialias=True
    )
    return resized.clamp(-1.0, 1.0)


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ValueError(f"size must be a positive int (pixels), got {size!r}")
    return size


def _check_channels(channels: int) -> int:
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    return channels
