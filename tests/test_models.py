"""Classifier loading: tiny models saved in every supported format and loaded back; crafted files whose loading
would run code are refused before their payload runs."""
import io
import json
import sys
import textwrap
import zipfile

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from msrs import weights
from msrs.checks import normalization as check_normalization
from msrs.fingerprint import file_fingerprint
from msrs.models import RESIZE_MODES, load_classifier


def tiny(num_classes=3):
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(2 * 4 * 4, num_classes), nn.Dropout(0.5))


@pytest.fixture()
def model():
    torch.manual_seed(0)
    m = tiny()
    with torch.no_grad():  # non-trivial batch-norm statistics, so train and eval modes differ
        m[1].running_mean.uniform_(-1, 1)
        m[1].running_var.uniform_(0.5, 2)
    return m.eval()


@pytest.fixture()
def x():
    return torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(1))


@pytest.fixture()
def factory_module(tmp_path, monkeypatch):
    (tmp_path / "tiny_factory.py").write_text(textwrap.dedent("""
        from torch import nn

        def make():
            return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(),
                                 nn.Linear(2 * 4 * 4, 3), nn.Dropout(0.5))

        def not_a_module():
            return 42
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "tiny_factory"
    sys.modules.pop("tiny_factory", None)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script / save are deprecated
def test_torchscript(tmp_path, model, x):
    path = tmp_path / "m.ts"
    torch.jit.save(torch.jit.script(model), str(path))
    loaded = load_classifier(str(path))
    assert loaded.kind == "torchscript" and not loaded.model.training
    torch.testing.assert_close(loaded.model(x), model(x))
    net, mean, std = load_classifier(path, mean=[0.5], std=[0.25])  # unpacks as (model, mean, std)
    assert mean == (0.5,) and std == (0.25,)
    with pytest.raises(ValueError, match="weights: .*only applies to a module:factory"):
        load_classifier(str(path), tmp_path / "w.pt")


def test_torch_export_training_mode_is_switched_to_eval(tmp_path, model, x):
    expected = model(x)
    model.train()  # exported in training mode by mistake: the loader switches BatchNorm / Dropout to inference
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (x[:2],), dynamic_shapes=({0: batch},))
    path = tmp_path / "m.pt2"
    torch.export.save(program, str(path))
    loaded = load_classifier(str(path), trust_code=True)
    assert loaded.kind == "export"
    out = loaded.model(x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(loaded.model(x), out)  # deterministic: no dropout
    assert loaded.model.eval() is loaded.model  # the engine calls .eval(); an exported module normally refuses
    with pytest.raises(NotImplementedError, match="training mode"):
        loaded.model.train()


def test_torch_export_fixed_batch_is_refused(tmp_path, model, x):
    path = tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(model, (x[:2],)), str(path))
    with pytest.raises(ValueError, match="fixed batch size of 2"):
        load_classifier(str(path), trust_code=True)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth"])
def test_factory_with_weights(tmp_path, factory_module, model, x, suffix):
    path = tmp_path / f"w{suffix}"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path), metadata={"mean": "0.1", "std": "0.2"})
    else:
        torch.save(state, str(path))
    loaded = load_classifier(f"{factory_module}:make", path)
    assert loaded.kind == "factory" and not loaded.model.training
    torch.testing.assert_close(loaded.model(x), model(x))
    if suffix == ".safetensors":
        assert (loaded.mean, loaded.std) == ((0.1,), (0.2,))  # from the file's metadata
        loaded = load_classifier(f"{factory_module}:make", path, mean=[0.3], std=[0.4])
        assert (loaded.mean, loaded.std) == ((0.3,), (0.4,))  # explicit wins
    else:
        assert loaded.mean is None and loaded.std is None


def test_factory_from_file_and_wrapped_checkpoint(tmp_path, model, x):
    (tmp_path / "arch.py").write_text("import torch.nn as nn\n"
                                      "def make():\n"
                                      "    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2),"
                                      " nn.ReLU(), nn.Flatten(), nn.Linear(32, 3), nn.Dropout(0.5))\n")
    weights = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, str(weights))
    (tmp_path / "ckpt.json").write_text(json.dumps({"mean": [0.5], "std": [0.5]}))
    loaded = load_classifier(f"{tmp_path / 'arch.py'}:make", weights)
    torch.testing.assert_close(loaded.model(x), model(x))
    assert (loaded.mean, loaded.std) == ((0.5,), (0.5,))  # from the JSON beside the weights
    assert loaded.normalization_source == str(tmp_path / "ckpt.json")
    assert [p.name for p in loaded.files] == ["arch.py", "ckpt.json", "ckpt.pth"]


def test_shipped_demo_classifier_loads():
    from msrs.zoo import asset_path

    weights = asset_path("digits_classifier.safetensors")
    assert weights.is_file(), "the demo classifier must ship in msrs/assets (scripts/train_classifier.py)"
    loaded = load_classifier("msrs.zoo:digits_classifier", weights)
    assert loaded.mean is not None and len(loaded.mean) == 1
    assert loaded.model(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    demo = load_classifier("demo")  # the same, by its short name
    assert (demo.mean, demo.std) == (loaded.mean, loaded.std) and demo.spec == "msrs.zoo:digits_classifier"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_errors(tmp_path, factory_module, model):
    with pytest.raises(FileNotFoundError, match="classifier: .*does not exist"):
        load_classifier(str(tmp_path / "missing.ts"))
    with pytest.raises(ValueError, match="factory 'nope' not found in module 'tiny_factory'"):
        load_classifier(f"{factory_module}:nope")
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_xyz'"):
        load_classifier("no_such_module_xyz:make")
    with pytest.raises(ValueError, match="returned int"):
        load_classifier(f"{factory_module}:not_a_module")
    with pytest.raises(FileNotFoundError, match="weights: .*does not exist"):
        load_classifier(f"{factory_module}:make", tmp_path / "missing.pt")

    state = model.state_dict()
    bad = dict(state)
    bad.pop("4.weight")
    bad["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.safetensors"
    save_file(bad, str(path))
    with pytest.raises(ValueError, match="missing keys: 4.weight; unexpected keys: extra.weight"):
        load_classifier(f"{factory_module}:make", path)
    shaped = dict(state)
    shaped["4.weight"] = torch.zeros(5, 32)
    torch.save(shaped, str(tmp_path / "shape.pt"))
    with pytest.raises(ValueError, match="wrong shape.*4.weight"):
        load_classifier(f"{factory_module}:make", tmp_path / "shape.pt")
    torch.save(state, str(tmp_path / "state.pt"))
    with pytest.raises(ValueError, match="not a TorchScript archive.*module:factory"):
        load_classifier(str(tmp_path / "state.pt"))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="weights: cannot read"):
        load_classifier(f"{factory_module}:make", tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="holds weights only"):
        load_classifier(str(path))


def test_normalization_checks():
    assert check_normalization(None, None) == (None, None)
    assert check_normalization([0.5, 0.4, 0.3], [0.2, 0.2, 0.2], 3) == ((0.5, 0.4, 0.3), (0.2, 0.2, 0.2))
    with pytest.raises(ValueError, match="both"):
        check_normalization([0.5], None)
    with pytest.raises(ValueError, match="different lengths"):
        check_normalization([0.5, 0.5], [0.2])
    with pytest.raises(ValueError, match="std: values must be > 0"):
        check_normalization([0.5], [0.0])
    with pytest.raises(ValueError, match="2 values for images with 3 channels"):
        check_normalization([0.5, 0.5], [0.2, 0.2], 3)


def test_file_fingerprint(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"abc")
    fp = file_fingerprint(tmp_path / "a.bin")
    assert fp["size"] == 3
    assert fp["sha256"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_bytes(b"abc")
    assert file_fingerprint(tmp_path / "d")["files"]["x"]["sha256"] == fp["sha256"]


# ------------------------------------------------------------------------------------------- files that carry code
class Payload:
    """Unpickling it creates the file `marker` (what a real payload would do with os.system)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def pickled(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def crafted_pt2(tmp_path, kind, marker):
    """A genuine torch.export archive of a tiny network, with one part replaced by a payload that creates `marker`:
    through the unrestricted-unpickling fallback of its sample inputs, a weight marked as pickled, a symbolic shape
    expression (sympy evaluates it) or a guard (compiled into the module's forward)."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    program = torch.export.export(net, (torch.rand(2, 1, 4, 4),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    genuine, crafted = tmp_path / "genuine.pt2", tmp_path / f"{kind}.pt2"
    torch.export.save(program, str(genuine))
    touch = f"__import__('pathlib').Path({str(marker)!r}).touch() is None"

    def edit(name, data):
        if kind == "sample_inputs" and name.endswith("data/sample_inputs/model.pt"):
            return pickled(Payload(marker))
        if kind == "pickled_weight" and name.endswith("data/weights/model_weights_config.json"):
            config = json.loads(data)
            config["config"]["1.bias"]["use_pickle"] = True
            return json.dumps(config).encode()
        if kind == "pickled_weight" and name.endswith("data/weights/" + weight_file):
            return pickled(Payload(marker))
        if kind == "sympy_expression" and name.endswith("models/model.json"):
            text = data.decode()
            assert "integer=True)" in text
            return text.replace("integer=True)", f"integer={touch})", 1).encode()
        if kind == "guards_code" and name.endswith("models/model.json"):
            program_json = json.loads(data)
            program_json["guards_code"] = [touch]
            return json.dumps(program_json).encode()
        return data

    with zipfile.ZipFile(genuine) as archive:
        config_name = next(n for n in archive.namelist() if n.endswith("model_weights_config.json"))
        weight_file = json.loads(archive.read(config_name))["config"]["1.bias"]["path_name"]
        with zipfile.ZipFile(crafted, "w", zipfile.ZIP_STORED) as out:
            for info in archive.infolist():
                out.writestr(info, edit(info.filename, archive.read(info.filename)))
    return crafted


@pytest.mark.parametrize("kind", ["sample_inputs", "pickled_weight", "sympy_expression", "guards_code"])
def test_pt2_is_refused_without_trust_and_its_payload_never_runs(tmp_path, kind):
    marker = tmp_path / "payload_ran"
    path = crafted_pt2(tmp_path, kind, marker)
    with pytest.raises(ValueError, match=r"torch\.export archive.*runs code.*trust_code=True.*--trust-code"):
        load_classifier(str(path))
    assert not marker.exists(), "the payload ran although msrs refused the file"

    # The same file loaded with trust: torch's loader runs the payload (so the file above was a live attack).
    try:
        loaded = load_classifier(str(path), trust_code=True)
        loaded.model(torch.rand(3, 1, 4, 4))
    except ValueError:  # some payloads break the load after they ran: msrs's error comes too late
        pass
    assert marker.exists(), f"the crafted {kind} payload did not run under torch.export.load: revisit this test"


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".ckpt"])
@pytest.mark.parametrize("trust_code", [False, True])
def test_pickled_weights_never_run_code(tmp_path, factory_module, model, suffix, trust_code):
    marker = tmp_path / "payload_ran"
    path = tmp_path / f"weights{suffix}"
    state = dict(model.state_dict())
    state["extra"] = Payload(marker)
    torch.save(state, str(path))
    with pytest.raises(ValueError, match=r"weights: cannot read .*weights_only=True.*never unpickles.*safetensors"):
        load_classifier(f"{factory_module}:make", path, trust_code=trust_code)  # trust never means weights_only=False
    assert not marker.exists()
    torch.load(str(path), weights_only=False)  # the unrestricted unpickler runs it: the payload is live
    assert marker.exists()


def test_pickled_weights_need_trust_on_a_torch_with_unsafe_weights_only(tmp_path, factory_module, model, x,
                                                                        monkeypatch):
    assert weights.SAFE_TORCH_LOAD == (tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 10))
    assert weights.release("2.9.1+cu121") < (2, 10) <= weights.release("2.10.0")  # numbers, not strings: "2.9" > "2.10"
    monkeypatch.setattr(weights, "SAFE_TORCH_LOAD", False)  # as on torch < 2.10 (CVE-2025-32434, CVE-2026-24747)
    pt, st = tmp_path / "w.pt", tmp_path / "w.safetensors"
    torch.save(model.state_dict(), str(pt))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(st))
    with pytest.raises(ValueError, match=r"weights: .*CVE-2025-32434.*safetensors.*trust_code=True"):
        load_classifier(f"{factory_module}:make", pt)
    torch.testing.assert_close(load_classifier(f"{factory_module}:make", st).model(x), model(x))
    torch.testing.assert_close(load_classifier(f"{factory_module}:make", pt, trust_code=True).model(x), model(x))


def test_declared_input_size(tmp_path, model, x):
    loaded = load_classifier(model, input_size=224, interpolation="bicubic")
    assert loaded.input_size == (224, 224) and loaded.interpolation == "bicubic"
    assert loaded.input_size_source == "arguments" and loaded.resize_mode == ("bicubic", True)
    assert load_classifier(model).input_size is None
    assert load_classifier(model).resize_mode == ("bilinear", True)
    assert load_classifier(model, input_size=(32, 48)).input_size == (32, 48)
    assert set(RESIZE_MODES) == {"nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"}
    for bad in (0, (32,), (32, -1), (32.5, 32), "224", True):
        with pytest.raises(ValueError, match="input_size: expected"):
            load_classifier(model, input_size=bad)
    with pytest.raises(ValueError, match="interpolation: expected one of"):
        load_classifier(model, interpolation="cubic")
