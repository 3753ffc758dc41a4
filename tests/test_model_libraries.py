"""Classifiers from timm and transformers (the `models` extra): tiny models made here, saved, loaded through
load_classifier and compared with the models in memory; their declared normalisation and input size; the error
when the extra is missing. No hub, no network."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from msrs.model_libraries import INSTALL_HINT, MissingExtraError, import_library
from msrs.models import load_classifier




@pytest.fixture(scope="module")
def timm():
    return import_library("timm", "tests")


@pytest.fixture(scope="module")
def transformers():
    return import_library("transformers", "tests")


class Payload:
    """Unpickling it creates the file `marker` (what a real payload would do with os.system)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def images(n=4, size=32, channels=3, seed=0):
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def save_state(model, path):
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))


# ------------------------------------------------------------------------------------------------------------ timm
def test_timm_resnet_round_trip_with_its_pretrained_config(tmp_path, timm):
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=7).eval()
    weights = tmp_path / "resnet.safetensors"
    save_state(model, weights)
    loaded = load_classifier("timm:test_resnet", weights)  # the head's 7 classes are read from the file
    assert loaded.kind == "timm" and not loaded.model.training and loaded.files == [weights]
    x = images(size=40)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x), rtol=0, atol=0)
    # timm 1.0's registered config of test_resnet (its r160_in1k tag): 160 x 160, bilinear, mean = std = 0.5
    assert (loaded.mean, loaded.std) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert loaded.normalization_source == "timm pretrained config of 'test_resnet'"
    assert loaded.input_size == (160, 160) and loaded.interpolation == "bilinear"
    assert loaded.resize_mode == ("bilinear", True)

    explicit = load_classifier("timm:test_resnet", weights, mean=[0.1], std=[0.2], input_size=(64, 48),
                               interpolation="nearest")
    assert (explicit.mean, explicit.std, explicit.input_size, explicit.interpolation) == (
        (0.1,), (0.2,), (64, 48), "nearest")


def test_timm_vit_with_constructor_arguments_and_a_wrapped_checkpoint(tmp_path, timm):
    """A ViT built at 32 x 32 (as for CIFAR-10): the declared input size follows img_size; a training checkpoint
    ({"epoch", "state_dict"}) saved with torch.save is read with weights_only=True; metadata wins over timm's
    config for the normalisation."""
    kwargs = dict(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2)
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224.augreg_in21k_ft_in1k", pretrained=False, num_classes=10,
                              **kwargs).eval()
    weights = tmp_path / "vit.pth"
    torch.save({"epoch": 9, "state_dict": model.state_dict()}, str(weights))
    loaded = load_classifier("timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k", weights, factory_kwargs=kwargs)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x), rtol=0, atol=0)
    assert loaded.input_size == (32, 32) and loaded.interpolation == "bicubic"
    assert (loaded.mean, loaded.std) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # the augreg tag's config

    tagged = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tagged),
              metadata={"mean": "0.49,0.48,0.45", "std": "0.25,0.24,0.26"})
    loaded = load_classifier("timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k", tagged, factory_kwargs=kwargs)
    assert (loaded.mean, loaded.std) == ((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    assert loaded.normalization_source == "safetensors metadata"


def test_timm_errors(tmp_path, timm):
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    weights = tmp_path / "resnet.safetensors"
    save_state(model, weights)
    with pytest.raises(ValueError, match="timm has no model 'no_such_net'"):
        load_classifier("timm:no_such_net", tmp_path / "missing.safetensors")  # before the weights are looked at
    with pytest.raises(ValueError, match="weights: 'timm:test_resnet' needs its weights file.*never downloads"):
        load_classifier("timm:test_resnet")
    with pytest.raises(FileNotFoundError, match="weights: .*does not exist"):
        load_classifier("timm:test_resnet", tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="missing keys: .*unexpected keys"):
        load_classifier("timm:test_efficientnet", weights)  # another architecture's weights
    with pytest.raises(ValueError, match="'pretrained' is not accepted"):
        load_classifier("timm:test_resnet", weights, factory_kwargs={"pretrained": True})
    with pytest.raises(ValueError, match="expected timm:NAME"):
        load_classifier("timm:", weights)


# ---------------------------------------------------------------------------------------------------- transformers
def tiny_vit(transformers, num_labels=3, image_size=32):
    config = transformers.ViTConfig(image_size=image_size, patch_size=8, hidden_size=16, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=32, num_labels=num_labels)
    torch.manual_seed(0)
    return transformers.ViTForImageClassification(config).eval()


def hf_folder(transformers, tmp_path, name="vit", **processor):
    model = tiny_vit(transformers)
    folder = tmp_path / name
    model.save_pretrained(str(folder))
    settings = dict(size={"height": 32, "width": 32}, image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.25, 0.3],
                    resample=2)
    settings.update(processor)
    transformers.ViTImageProcessor(**settings).save_pretrained(str(folder))
    return model, folder


@pytest.mark.parametrize("rescale", [True, False])
def test_hf_round_trip_and_normalisation_equal_the_processor(tmp_path, transformers, rescale):
    model, folder = hf_folder(transformers, tmp_path, do_rescale=rescale)
    loaded = load_classifier(f"hf:{folder}")
    assert loaded.kind == "hf" and not loaded.model.training and loaded.files == [folder]
    assert loaded.input_size == (32, 32) and loaded.interpolation == "bilinear"  # resample 2 = PIL bilinear
    assert loaded.normalization_source == str(folder / "preprocessor_config.json")
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(pixel_values=x).logits, rtol=0, atol=0)

    # The processor itself is the reference: a uint8 image through it equals msrs's (y - mean) / std, y = x / 255.
    pixels = np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    processor = transformers.ViTImageProcessor.from_pretrained(str(folder))
    expected = torch.as_tensor(np.asarray(processor(images=list(pixels), return_tensors="np")["pixel_values"]))
    y = torch.from_numpy(pixels).permute(0, 3, 1, 2).double() / 255
    mean = torch.tensor(loaded.mean, dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.tensor(loaded.std, dtype=torch.float64).view(1, -1, 1, 1)
    torch.testing.assert_close((y - mean) / std, expected.double(), rtol=1e-5, atol=1e-4)


def test_hf_input_size_from_crop_or_model_config(tmp_path, transformers):
    _, folder = hf_folder(transformers, tmp_path, "crop", size={"shortest_edge": 40}, do_center_crop=True,
                          crop_size={"height": 32, "width": 32}, resample=3)
    loaded = load_classifier(f"hf:{folder}")
    assert loaded.input_size == (32, 32) and loaded.interpolation == "bicubic"
    (folder / "preprocessor_config.json").unlink()  # no processor: no normalisation, the model's image_size
    loaded = load_classifier(f"hf:{folder}")
    assert loaded.mean is None and loaded.input_size == (32, 32) and loaded.interpolation is None


def test_hf_errors(tmp_path, transformers):
    with pytest.raises(FileNotFoundError, match="is not a folder.*does not download"):
        load_classifier(f"hf:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no config.json"):
        load_classifier(f"hf:{tmp_path / 'empty'}")
    _, folder = hf_folder(transformers, tmp_path)
    with pytest.raises(ValueError, match="weights: .*holds its weights"):
        load_classifier(f"hf:{folder}", folder / "model.safetensors")
    state = load_file(str(folder / "model.safetensors"))
    state.pop("classifier.weight")
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="do not match its config.*missing keys: classifier.weight"):
        load_classifier(f"hf:{folder}")  # transformers alone would initialise the head at random


def test_hf_folder_code_and_pickles_never_run(tmp_path, transformers):
    """A folder that names its own modelling code (auto_map) is refused before transformers could import it; a
    pickled weights file is read with weights_only=True, so its payload does not run."""
    marker = tmp_path / "payload_ran"
    _, folder = hf_folder(transformers, tmp_path)
    (folder / "modeling_evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForImageClassification": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="auto_map.*trust_code=True.*--trust-code"):
        load_classifier(f"hf:{folder}")
    assert not marker.exists()

    _, folder = hf_folder(transformers, tmp_path, "pickled")
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save({**state, "extra": Payload(marker)}, str(folder / "pytorch_model.bin"))
    with pytest.raises(ValueError, match="transformers cannot load .*never unpickles"):
        load_classifier(f"hf:{folder}")
    assert not marker.exists()
    torch.load(str(folder / "pytorch_model.bin"), weights_only=False)  # the payload is live
    assert marker.exists()


# ---------------------------------------------------------------------------------------------- the missing extra
@pytest.mark.parametrize("spec, package", [("timm:test_resnet", "timm"), ("hf:{folder}", "transformers")])
def test_missing_extra_says_what_to_install(tmp_path, transformers, monkeypatch, spec, package):
    _, folder = hf_folder(transformers, tmp_path)
    monkeypatch.setitem(sys.modules, package, None)  # as if it were not installed
    with pytest.raises(MissingExtraError, match=rf"needs the '{package}' package.*{INSTALL_HINT}".replace(
            "[", r"\[").replace("]", r"\]")):
        load_classifier(spec.format(folder=folder), tmp_path / "w.safetensors" if package == "timm" else None)
    assert issubclass(MissingExtraError, ImportError)


# ------------------------------------------------------------------------------- torchvision without compiled ops
FAKE_TORCHVISION = {  # the import sequence of torchvision 0.28 when its _C library cannot load
    "__init__.py": "from . import extension\nfrom . import _meta_registrations\n",
    "extension.py": "def _has_ops():\n    return False\n",
    "_meta_registrations.py": ("import torch\n"
                               "@torch.library.register_fake('torchvision::nms')\n"
                               "def meta_nms(dets, scores, iou_threshold):\n"
                               "    return dets.new_empty(0, dtype=torch.long)\n"),
}


@pytest.mark.parametrize("msrs_first", [False, True])
def test_torchvision_without_its_ops_imports_once_msrs_is_imported(tmp_path, msrs_first):
    package = tmp_path / "torchvision"
    package.mkdir()
    for name, text in FAKE_TORCHVISION.items():
        (package / name).write_text(text)
    code = ("import torch\n" + ("import msrs\n" if msrs_first else "") +
            "import torchvision\n"
            "from msrs import torchvision_compat\n"
            "print('imported', torchvision_compat.declared_stand_ins(), hasattr(torch.ops.torchvision, 'nms'))\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    if msrs_first:
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "imported True True"
        assert "declared torchvision::nms / qnms without kernels" in result.stderr
    else:  # the failure msrs works around
        assert result.returncode != 0 and "operator torchvision::nms does not exist" in result.stderr
