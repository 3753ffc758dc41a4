"""Image classification data sets for certification, without torchvision.

Every loader returns an :class:`ImageDataset`: all images in memory as float32 ``[N, C, H, W]`` in [0, 1] (the
smoothing noise is added in that pixel space; a classifier's own normalisation is applied later, by the engine),
int64 labels ``[N]``, the number of classes and a name.

Loaders
  ``digits(split)``            scikit-learn's 8x8 handwritten digits / 16; test = indices i with i % 5 == 0 (360
                               images), train = the rest (1437).
  ``cifar10(root, split)``     a local copy of the python version of CIFAR-10 (``cifar-10-batches-py``: pickled
                               ``data_batch_1..5`` and ``test_batch``, each a dict with b"data" uint8 [10000, 3072]
                               and b"labels").  Nothing is downloaded.
  ``image_folder(root, ...)``  one sub-folder per class (``root/<class>/<image>``); see FOLDER_LABELS for labels.
  ``load_dataset(spec, ...)``  the command line's spelling: ``digits``, ``digits:train``, ``cifar10:/path``,
                               ``cifar10:train:/path``, ``folder:/path``.

Every data set carries ``class_names`` (label i is ``class_names[i]``; None where a data set has none), so that a
run can record its class-to-index map (``ImageDataset.class_index()``).
"""
from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

__all__ = ["ImageDataset", "ImageFiles", "cifar10", "digits", "image_folder", "imagenet_folder", "load_dataset",
           "resize_shorter_center_crop", "DATASET_SPECS", "FOLDER_LABELS"]

PathLike = Union[str, os.PathLike]

DATASET_SPECS = (
    "digits | digits:train | digits:test | cifar10:DIR | cifar10:train:DIR | folder:DIR | imagenet:DIR "
    "(DIR of cifar10 is a cifar-10-batches-py folder or its parent; folder:DIR holds one sub-folder per class; "
    "imagenet:DIR is such a folder, e.g. ILSVRC2012's val/ in its 1,000 wnid folders, read lazily and resized to "
    "256 then centre-cropped to 224)"
)
# How folder:DIR numbers its classes (for --help and the README).  Python's sorted() compares code points: "B"
# sorts before "a" and "10" before "2", which is why an explicit list exists.
FOLDER_LABELS = (
    "folder:DIR labels its images by class sub-folder: without class names, the sub-folders sorted by name "
    "(code-point order: 'B' before 'a', '10' before '2') get labels 0, 1, 2, ...; with class names (--class-names), "
    "label i is the i-th name, every name must be a sub-folder and every sub-folder must be named"
)

SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class ImageFiles:
    """Images read from their files only when indexed: the stand-in for an [N, C, H, W] float32 tensor in [0, 1]
    where a data set is too large to hold (ImageNet's 50,000 validation images are 30 GB as float32; a run reads
    the ones it certifies). Indexing (an int, a slice, a list or an int64 tensor of indices) decodes those files
    through `transform` (a PIL image -> PIL image of the declared height and width)."""

    dtype = torch.float32

    def __init__(self, paths: Sequence[Path], transform, shape: tuple, mode: str = "RGB"):
        self.paths, self.transform, self.mode = list(paths), transform, mode
        self.shape = torch.Size((len(self.paths), *shape))

    def dim(self) -> int:
        return 4

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, int):
            return self._read(self.paths[index])
        if isinstance(index, slice):
            chosen = range(len(self.paths))[index]
        else:
            chosen = torch.as_tensor(index, dtype=torch.int64).reshape(-1).tolist()
        if not chosen:
            return torch.empty((0, *self.shape[1:]), dtype=torch.float32)
        return torch.stack([self._read(self.paths[i]) for i in chosen])

    def _read(self, path: Path) -> torch.Tensor:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                array = np.asarray(self.transform(im.convert(self.mode)), dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"root: cannot read image {str(path)!r}: {e}") from None
        if array.ndim == 2:
            array = array[:, :, None]
        if tuple(array.shape) != (self.shape[2], self.shape[3], self.shape[1]):
            raise ValueError(f"root: {str(path)!r} became {array.shape[1]}x{array.shape[0]} after the transform, "
                             f"expected {self.shape[3]}x{self.shape[2]}")
        return torch.from_numpy(array.transpose(2, 0, 1).astype(np.float32) / 255.0)


@dataclass
class ImageDataset:
    """Images float32 [N, C, H, W] in [0, 1], labels int64 [N] in [0, num_classes)."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    name: str
    class_names: Optional[list] = field(default=None)  # label i is class_names[i]; None when unknown

    def __post_init__(self):
        if not isinstance(self.images, (torch.Tensor, ImageFiles)) or self.images.dim() != 4:
            raise ValueError(f"ImageDataset {self.name!r}: images must be a tensor [N, C, H, W], got "
                             f"{getattr(self.images, 'shape', type(self.images).__name__)}")
        if self.images.dtype != torch.float32:
            raise ValueError(f"ImageDataset {self.name!r}: images must be float32, got {self.images.dtype}")
        if not isinstance(self.labels, torch.Tensor) or self.labels.dim() != 1 or self.labels.dtype != torch.int64:
            raise ValueError(f"ImageDataset {self.name!r}: labels must be an int64 tensor [N]")
        if self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(f"ImageDataset {self.name!r}: {self.images.shape[0]} images but "
                             f"{self.labels.shape[0]} labels")
        if int(self.num_classes) < 1:
            raise ValueError(f"ImageDataset {self.name!r}: num_classes must be >= 1, got {self.num_classes}")
        self.num_classes = int(self.num_classes)
        if self.labels.numel() and (int(self.labels.min()) < 0 or int(self.labels.max()) >= self.num_classes):
            raise ValueError(f"ImageDataset {self.name!r}: labels must lie in [0, {self.num_classes}), got "
                             f"[{int(self.labels.min())}, {int(self.labels.max())}]")
        if self.class_names is not None:
            self.class_names = _check_class_names(self.class_names, f"ImageDataset {self.name!r}: class_names")
            if len(self.class_names) != self.num_classes:
                raise ValueError(f"ImageDataset {self.name!r}: {len(self.class_names)} class names for "
                                 f"{self.num_classes} classes")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index):
        return self.images[index], int(self.labels[index])

    @property
    def image_shape(self) -> tuple:
        return tuple(self.images.shape[1:])

    @property
    def classes(self) -> Optional[list]:
        """The former name of class_names."""
        return self.class_names

    def class_index(self) -> Optional[dict]:
        """{class name: label} (what a run's configuration records), or None when the names are unknown."""
        if self.class_names is None:
            return None
        return {name: label for label, name in enumerate(self.class_names)}

    def __repr__(self) -> str:
        return (f"ImageDataset(name={self.name!r}, images={len(self)}x{list(self.image_shape)}, "
                f"num_classes={self.num_classes})")


def _check_class_names(names, what: str) -> list:
    """names as a list of distinct, non-empty strings; ValueError naming ``what`` otherwise."""
    if isinstance(names, (str, bytes)) or not hasattr(names, "__iter__"):
        raise ValueError(f"{what}: expected a list of class names, got {names!r}")
    names = list(names)
    bad = [n for n in names if not isinstance(n, str) or not n]
    if bad:
        raise ValueError(f"{what}: class names must be non-empty strings, got {bad[:5]}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{what}: class names must be distinct, {repeated[:5]} repeat")
    return names


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    return split


# ----------------------------------------------------------------------------------------------------------- digits
def digits(split: str = "test") -> ImageDataset:
    """scikit-learn's handwritten digits, 8x8 grayscale scaled to [0, 1]; test = i % 5 == 0, train = the rest."""
    _check_split(split)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    data = np.asarray(bunch.data, dtype=np.float32).reshape(-1, 1, 8, 8) / 16.0
    target = np.asarray(bunch.target, dtype=np.int64)
    index = np.arange(data.shape[0])
    keep = (index % 5 == 0) if split == "test" else (index % 5 != 0)
    return ImageDataset(
        images=torch.from_numpy(np.ascontiguousarray(data[keep])),
        labels=torch.from_numpy(target[keep]),
        num_classes=10,
        name=f"digits:{split}",
        class_names=[str(c) for c in range(10)],
    )


# ---------------------------------------------------------------------------------------------------------- CIFAR-10
class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a data file cannot run arbitrary code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays and plain containers)")


def _load_pickle(path: Path, what: str):
    try:
        with open(path, "rb") as f:
            return _ArrayUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except OSError as e:
        raise FileNotFoundError(f"{what}: cannot read {path}: {e.strerror or e}") from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a wrong format
        raise ValueError(f"{what}: {path} is not a CIFAR-10 python pickle ({type(e).__name__}: {e})") from None


def _get(d: dict, key: str):
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    return None


def _find_cifar_dir(root: PathLike) -> Path:
    root = _existing_folder(root, "CIFAR-10 folder", " (expected a cifar-10-batches-py folder)")
    for candidate in (root, root / "cifar-10-batches-py"):
        if (candidate / "test_batch").exists() or (candidate / "data_batch_1").exists():
            return candidate
    raise FileNotFoundError(
        f"root: {str(root)!r} holds no CIFAR-10 batches (expected the python version: a cifar-10-batches-py folder "
        "with data_batch_1..5 and test_batch, or its parent)")


def cifar10(root: PathLike, split: str = "test") -> ImageDataset:
    """CIFAR-10 from a local ``cifar-10-batches-py`` folder (or its parent): 32x32 RGB in [0, 1]."""
    _check_split(split)
    folder = _find_cifar_dir(root)
    names = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    images, labels = [], []
    for name in names:
        path = folder / name
        if not path.exists():
            raise FileNotFoundError(f"root: {str(folder)!r} has no {name} (needed for split {split!r})")
        batch = _load_pickle(path, "root")
        if not isinstance(batch, dict):
            raise ValueError(f"root: {path} is not a CIFAR-10 batch (expected a dict, got {type(batch).__name__})")
        data, batch_labels = _get(batch, "data"), _get(batch, "labels")
        if data is None or batch_labels is None:
            raise ValueError(f"root: {path} is not a CIFAR-10 batch (no b'data' / b'labels' entries)")
        data = np.asarray(data)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"root: {path}: b'data' must be uint8 [N, 3072], got {data.dtype} {list(data.shape)}")
        batch_labels = np.asarray(batch_labels, dtype=np.int64).reshape(-1)
        if batch_labels.shape[0] != data.shape[0]:
            raise ValueError(f"root: {path}: {data.shape[0]} images but {batch_labels.shape[0]} labels")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(batch_labels)
    classes = list(CIFAR10_CLASSES)
    meta_path = folder / "batches.meta"
    if meta_path.exists():
        try:
            meta = _load_pickle(meta_path, "root")
            names_in_meta = _get(meta, "label_names") if isinstance(meta, dict) else None
            if names_in_meta is not None and len(names_in_meta) == 10:
                classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names_in_meta]
        except ValueError:
            pass  # the class names are a nicety; the batches decide
    image_array = np.concatenate(images).astype(np.float32) / 255.0
    return ImageDataset(
        images=torch.from_numpy(np.ascontiguousarray(image_array)),
        labels=torch.from_numpy(np.concatenate(labels)),
        num_classes=10,
        name=f"cifar10:{split}",
        class_names=classes,
    )


# ------------------------------------------------------------------------------------------------------ image folder
def _parse_size(size) -> Optional[tuple]:
    if size is None:
        return None
    if isinstance(size, int):
        size = (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size: expected a positive int or (height, width), got {size!r}")
    return size


def _existing_folder(root: PathLike, what: str = "image folder", expected: str = "") -> Path:
    """root as a Path, or the error naming `root`: `what` does not exist, or it is not a folder (+ `expected`)."""
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"root: {what} {str(root)!r} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"root: {str(root)!r} is not a folder{expected}")
    return root


def _image_files(folder: Path) -> list:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))


def _folder_classes(root: Path, class_names: Optional[Sequence[str]]) -> list:
    """The class sub-folders of ``root`` in label order: sorted by name, or the order of ``class_names`` (which
    must name every sub-folder, and only sub-folders)."""
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if class_names is None:
        if not folders:
            raise ValueError(f"root: {str(root)!r} has no class sub-folders (expected root/<class>/<image files>)")
        return folders
    names = _check_class_names(class_names, "class_names")
    missing = [n for n in names if n not in folders]
    if missing:
        raise ValueError(f"class_names: {missing[:10]} {'has' if len(missing) == 1 else 'have'} no sub-folder in "
                         f"{str(root)!r} (its class folders: {folders[:20]}{' ...' if len(folders) > 20 else ''})")
    unnamed = [f for f in folders if f not in names]
    if unnamed:
        raise ValueError(f"class_names: the sub-folders {unnamed[:10]} of {str(root)!r} are not named; list every "
                         "class folder (label = position in the list), or move the others out")
    return names


def image_folder(root: PathLike, *, size=None, mode: str = "RGB",
                 class_names: Optional[Sequence[str]] = None) -> ImageDataset:
    """Images from ``root/<class>/<file>``, files in sorted order within each class.  Labels (FOLDER_LABELS): the
    position of the class folder among the sub-folders sorted by name, or in ``class_names`` when given (every name
    must be a sub-folder and every sub-folder named; a name without a folder is a ValueError).

    size: None (all images must then have the same size), an int or (height, width) to resize to (bilinear).
    mode: "RGB" (3 channels) or "L" (grayscale, 1 channel).
    """
    from PIL import Image, UnidentifiedImageError

    if mode not in ("RGB", "L"):
        raise ValueError(f"mode: expected 'RGB' or 'L' (grayscale), got {mode!r}")
    size = _parse_size(size)
    root = _existing_folder(root)
    classes = _folder_classes(root, class_names)
    images, labels = [], []
    for label, cls in enumerate(classes):
        for path in _image_files(root / cls):
            try:
                with Image.open(path) as im:
                    im = im.convert(mode)
                    if size is not None and im.size != (size[1], size[0]):
                        im = im.resize((size[1], size[0]), Image.BILINEAR)
                    array = np.asarray(im, dtype=np.uint8)
            except (UnidentifiedImageError, OSError) as e:
                raise ValueError(f"root: cannot read image {str(path)!r}: {e}") from None
            if array.ndim == 2:
                array = array[:, :, None]
            if images and array.shape != images[0].shape:
                raise ValueError(
                    f"root: images differ in size ({str(path)!r} is {array.shape[1]}x{array.shape[0]}, the first "
                    f"is {images[0].shape[1]}x{images[0].shape[0]}): pass size= (--image-size) to resize them")
            images.append(array)
            labels.append(label)
    if not images:
        raise ValueError(f"root: no image files ({', '.join(IMAGE_EXTENSIONS)}) under {str(root)!r}/<class>/")
    stacked = np.stack(images).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    return ImageDataset(
        images=torch.from_numpy(np.ascontiguousarray(stacked)),
        labels=torch.tensor(labels, dtype=torch.int64),
        num_classes=len(classes),
        name=f"folder:{root.name}",
        class_names=classes,
    )


# ---------------------------------------------------------------------------------------------------------- by spec
IMAGENET_RESIZE, IMAGENET_CROP = 256, 224  # Cohen et al.'s (and both papers') ImageNet test transform


def resize_shorter_center_crop(resize: int = IMAGENET_RESIZE, crop: int = IMAGENET_CROP):
    """torchvision's Resize(resize) then CenterCrop(crop) on a PIL image: the shorter side becomes `resize` (the
    longer int(resize * long / short)), bilinear as PIL does it (antialiased), then the central crop x crop, its
    corner at round((size - crop) / 2)."""
    from PIL import Image

    def transform(im):
        w, h = im.size
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(resize * long / short)
        new_w, new_h = (resize, new_long) if w <= h else (new_long, resize)
        if (new_w, new_h) != (w, h):
            im = im.resize((new_w, new_h), Image.BILINEAR)
        left, top = int(round((new_w - crop) / 2.0)), int(round((new_h - crop) / 2.0))
        return im.crop((left, top, left + crop, top + crop))

    return transform


def imagenet_folder(root: PathLike, *, class_names: Optional[Sequence[str]] = None) -> ImageDataset:
    """An ImageNet-style split folder (``root/<wnid>/<file>``, e.g. ILSVRC2012's val/ sorted into its 1,000 class
    folders, whose sorted order is the standard class index), read lazily (ImageFiles) through Resize(256) and
    CenterCrop(224) as Cohen et al. and both papers evaluate. Labels as folder:DIR (FOLDER_LABELS)."""
    root = _existing_folder(root)
    classes = _folder_classes(root, class_names)
    paths, labels = [], []
    for label, cls in enumerate(classes):
        files = _image_files(root / cls)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise ValueError(f"root: no image files ({', '.join(IMAGE_EXTENSIONS)}) under {str(root)!r}/<class>/")
    images = ImageFiles(paths, resize_shorter_center_crop(), (3, IMAGENET_CROP, IMAGENET_CROP))
    return ImageDataset(images=images, labels=torch.tensor(labels, dtype=torch.int64), num_classes=len(classes),
                        name=f"imagenet:{root}", class_names=list(classes))


def load_dataset(spec: str, *, split: Optional[str] = None, size=None, mode: Optional[str] = None,
                 class_names: Optional[Sequence[str]] = None) -> ImageDataset:
    """A data set from its command-line spelling (see DATASET_SPECS).

    split: for digits / cifar10 when the spec names none (default "test"); size, mode, class_names: for folder:
    (see image_folder; mode defaults to "RGB")."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"dataset: expected one of {DATASET_SPECS}; got {spec!r}")
    if split is not None:
        _check_split(split)
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind in ("digits", "cifar10") and (size is not None or mode is not None):
        raise ValueError(f"dataset: {spec!r}: image size / grayscale options apply to folder: data sets only")
    if kind in ("digits", "cifar10") and class_names is not None:
        raise ValueError(f"class_names: {spec!r} names its own classes; class names apply to folder: data sets only")
    if kind == "digits":
        if rest and rest not in SPLITS:
            raise ValueError(f"dataset: {spec!r}: digits takes ':train' or ':test', got {rest!r}")
        if rest and split and rest != split:
            raise ValueError(f"dataset: {spec!r} names split {rest!r} but split={split!r} was also given")
        return digits(rest or split or "test")
    if kind == "cifar10":
        head, sep, tail = rest.partition(":")
        if sep and head in SPLITS and tail:
            if split and head != split:
                raise ValueError(f"dataset: {spec!r} names split {head!r} but split={split!r} was also given")
            split_, path = head, tail
        else:
            split_, path = split or "test", rest
        if not path:
            raise ValueError(f"dataset: {spec!r}: cifar10 needs a folder, e.g. cifar10:/data/cifar-10-batches-py")
        try:
            return cifar10(path, split_)
        except (FileNotFoundError, NotADirectoryError, ValueError) as e:
            raise type(e)(f"dataset {spec!r}: {e}") from None
    if kind == "folder":
        if not rest:
            raise ValueError(f"dataset: {spec!r}: folder needs a path, e.g. folder:/data/images")
        if split:
            raise ValueError(f"dataset: {spec!r}: an image folder has no splits (point it at the split's folder)")
        try:
            return image_folder(rest, size=size, mode=mode or "RGB", class_names=class_names)
        except (FileNotFoundError, NotADirectoryError, ValueError) as e:
            raise type(e)(f"dataset {spec!r}: {e}") from None
    if kind == "imagenet":
        if not rest:
            raise ValueError(f"dataset: {spec!r}: imagenet needs a path, e.g. imagenet:/data/imagenet/val")
        if split or size is not None or mode is not None:
            raise ValueError(f"dataset: {spec!r}: imagenet:DIR has its own transform (256, centre crop 224, RGB) and "
                             "no splits (point it at the split's folder): no split / image size / grayscale options")
        try:
            return imagenet_folder(rest, class_names=class_names)
        except (FileNotFoundError, NotADirectoryError, ValueError) as e:
            raise type(e)(f"dataset {spec!r}: {e}") from None
    raise ValueError(f"dataset: unknown data set {spec!r}; expected {DATASET_SPECS}")
