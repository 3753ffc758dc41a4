"""Data loaders on small local copies (nothing is downloaded)."""
import pickle

import numpy as np
import pytest
import torch

from msrs.data import ImageDataset, cifar10, digits, image_folder, load_dataset


def test_digits_split_matches_design():
    test, train = digits("test"), digits("train")
    assert len(test) == 360 and len(train) == 1437
    assert test.images.shape == (360, 1, 8, 8) and test.images.dtype == torch.float32
    assert test.labels.dtype == torch.int64 and test.num_classes == 10
    assert float(test.images.min()) >= 0.0 and float(test.images.max()) <= 1.0
    from sklearn.datasets import load_digits

    bunch = load_digits()
    np.testing.assert_allclose(test.images[3, 0].numpy(), bunch.images[15] / 16.0, rtol=0, atol=1e-7)
    assert int(test.labels[3]) == bunch.target[15]
    assert int(train.labels[0]) == bunch.target[1]
    assert load_dataset("digits").name == "digits:test"
    assert len(load_dataset("digits:train")) == 1437
    assert len(load_dataset("digits", split="train")) == 1437
    assert test.class_names == ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
    assert test.class_index()["7"] == 7
    with pytest.raises(ValueError, match="split"):
        digits("val")
    with pytest.raises(ValueError, match="dataset"):
        load_dataset("digits:val")


def _write_cifar(root, sizes=None, protocol=2, parent=False):
    folder = root / "cifar-10-batches-py" if parent else root
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sizes = sizes or {"test_batch": 4, **{f"data_batch_{i}": 3 for i in range(1, 6)}}
    written = {}
    for name, count in sizes.items():
        data = rng.integers(0, 256, size=(count, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, size=count)]
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [b"x.png"] * count}, f, protocol=protocol)
        written[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)], b"num_vis": 3072}, f, protocol=protocol)
    return written


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_standard_pickles(tmp_path, protocol):
    written = _write_cifar(tmp_path, protocol=protocol)
    test = cifar10(tmp_path, "test")
    data, labels = written["test_batch"]
    assert test.images.shape == (4, 3, 32, 32) and test.images.dtype == torch.float32
    # the standard layout: 1024 red, then green, then blue values, each row-major
    np.testing.assert_allclose(test.images[1, 2, 0, 5].item(), data[1, 2 * 1024 + 5] / 255.0, atol=1e-7)
    np.testing.assert_allclose(test.images[2, 0, 3, 4].item(), data[2, 3 * 32 + 4] / 255.0, atol=1e-7)
    assert test.labels.tolist() == labels
    assert test.class_names == [f"c{i}" for i in range(10)] and test.classes == test.class_names
    train = cifar10(tmp_path, "train")
    assert len(train) == 15
    assert train.labels.tolist() == sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert len(load_dataset(f"cifar10:{tmp_path}")) == 4
    assert len(load_dataset(f"cifar10:train:{tmp_path}")) == 15


def test_cifar10_parent_folder_and_errors(tmp_path):
    _write_cifar(tmp_path, {"test_batch": 2}, parent=True)
    assert len(cifar10(tmp_path)) == 2  # the parent of cifar-10-batches-py works too
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        cifar10(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="root.*does not exist"):
        cifar10(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="dataset 'cifar10:.*does not exist"):
        load_dataset(f"cifar10:{tmp_path / 'nope'}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no CIFAR-10 batches"):
        cifar10(empty)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="not a CIFAR-10"):
        cifar10(bad)
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    with open(wrong / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match="uint8 \\[N, 3072\\]"):
        cifar10(wrong)


def test_cifar10_refuses_code_in_pickle(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(ValueError, match="refusing to load builtins.print"):
        cifar10(tmp_path)


def _png(path, array):
    from PIL import Image

    Image.fromarray(array).save(path)


def test_image_folder(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {}
    for cls, count in (("dog", 2), ("cat", 3)):
        (tmp_path / cls).mkdir()
        for i in range(count):
            a = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
            _png(tmp_path / cls / f"{i}.png", a)
            arrays[(cls, i)] = a
    (tmp_path / "cat" / "notes.txt").write_text("ignored")
    ds = image_folder(tmp_path)
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 2
    assert ds.labels.tolist() == [0, 0, 0, 1, 1]
    assert ds.images.shape == (5, 3, 6, 5)
    np.testing.assert_allclose(ds.images[3].permute(1, 2, 0).numpy(), arrays[("dog", 0)] / 255.0, atol=1e-7)
    gray = image_folder(tmp_path, mode="L", size=4)
    assert gray.images.shape == (5, 1, 4, 4)
    spec = load_dataset(f"folder:{tmp_path}", size=(3, 2), mode="L")
    assert spec.images.shape == (5, 1, 3, 2)
    # images of different sizes need a resize
    _png(tmp_path / "dog" / "big.png", rng.integers(0, 256, size=(9, 9, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="differ in size.*size="):
        image_folder(tmp_path)
    assert image_folder(tmp_path, size=(6, 5)).images.shape == (6, 3, 6, 5)
    (tmp_path / "dog" / "broken.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        image_folder(tmp_path, size=4)


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="root"):
        image_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="no class sub-folders"):
        image_folder(tmp_path)
    (tmp_path / "a").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        image_folder(tmp_path)
    with pytest.raises(ValueError, match="mode"):
        image_folder(tmp_path, mode="CMYK")
    with pytest.raises(FileNotFoundError, match="dataset 'folder:"):
        load_dataset(f"folder:{tmp_path / 'missing'}")


def test_load_dataset_errors():
    for spec in ("", "mnist", "cifar10", "folder:"):
        with pytest.raises(ValueError, match="dataset"):
            load_dataset(spec)
    with pytest.raises(ValueError, match="folder: data sets only"):
        load_dataset("digits", size=4)


def test_image_dataset_validation():
    with pytest.raises(ValueError, match="labels must lie"):
        ImageDataset(torch.zeros(2, 1, 2, 2), torch.tensor([0, 3]), 3, "x")
    with pytest.raises(ValueError, match="float32"):
        ImageDataset(torch.zeros(2, 1, 2, 2, dtype=torch.float64), torch.tensor([0, 1]), 3, "x")
    with pytest.raises(ValueError, match="2 images but 1 labels"):
        ImageDataset(torch.zeros(2, 1, 2, 2), torch.tensor([0]), 3, "x")
    ds = ImageDataset(torch.zeros(2, 1, 2, 2), torch.tensor([0, 2]), 3, "x")
    image, label = ds[1]
    assert image.shape == (1, 2, 2) and label == 2 and len(ds) == 2


def test_cifar10_default_class_names(tmp_path):
    _write_cifar(tmp_path, {"test_batch": 2})
    (tmp_path / "batches.meta").unlink()  # without the meta file, CIFAR-10's published names
    names = cifar10(tmp_path).class_names
    assert names == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _class_folders(root, names, per_class=1):
    """One tiny PNG per class whose pixel value encodes the folder (folder k of ``names`` -> value 10 * k + 5)."""
    for k, name in enumerate(names):
        (root / name).mkdir()
        for i in range(per_class):
            _png(root / name / f"{i}.png", np.full((2, 2), 10 * k + 5, dtype=np.uint8))


def test_image_folder_labels_in_code_point_order(tmp_path):
    # "10" sorts before "2" and "B" before "a": the documented, code-point order
    folders = ["2", "10", "a", "B"]
    _class_folders(tmp_path, folders)
    ds = image_folder(tmp_path, mode="L")
    assert ds.class_names == ["10", "2", "B", "a"]
    # each image's label must be the position of its own folder in that order (pixel value -> folder)
    for image, label in zip(ds.images, ds.labels.tolist()):
        folder = folders[(round(float(image[0, 0, 0]) * 255) - 5) // 10]
        assert ds.class_names[label] == folder
    assert ds.class_index() == {"10": 0, "2": 1, "B": 2, "a": 3}


def test_image_folder_explicit_class_names(tmp_path):
    folders = ["cat", "dog", "ant"]
    _class_folders(tmp_path, folders, per_class=2)
    order = ["dog", "ant", "cat"]
    ds = load_dataset(f"folder:{tmp_path}", mode="L", class_names=order)
    assert ds.class_names == order and ds.num_classes == 3
    for image, label in zip(ds.images, ds.labels.tolist()):
        folder = folders[(round(float(image[0, 0, 0]) * 255) - 5) // 10]
        assert order[label] == folder
    assert ds.labels.tolist() == [0, 0, 1, 1, 2, 2]  # files are read class by class, in the given order
    with pytest.raises(ValueError, match=r"class_names: \['bird'\] has no sub-folder.*'ant', 'cat', 'dog'"):
        image_folder(tmp_path, class_names=["dog", "ant", "cat", "bird"])
    with pytest.raises(ValueError, match=r"sub-folders \['cat'\] .* not named"):
        image_folder(tmp_path, class_names=["dog", "ant"])
    with pytest.raises(ValueError, match="distinct"):
        image_folder(tmp_path, class_names=["dog", "ant", "cat", "dog"])
    with pytest.raises(ValueError, match="expected a list"):
        image_folder(tmp_path, class_names="dog,ant,cat")
    with pytest.raises(ValueError, match="class_names: 'digits'.*folder: data sets only"):
        load_dataset("digits", class_names=order)


def test_image_dataset_class_names_validation():
    images, labels = torch.zeros(2, 1, 2, 2), torch.tensor([0, 1])
    assert ImageDataset(images, labels, 2, "x").class_names is None
    assert ImageDataset(images, labels, 2, "x").class_index() is None
    with pytest.raises(ValueError, match="3 class names for 2 classes"):
        ImageDataset(images, labels, 2, "x", class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="distinct"):
        ImageDataset(images, labels, 2, "x", class_names=["a", "a"])
