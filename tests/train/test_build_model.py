"""build_model: any arch with a new head; torchvision weights from the cache, local files, clear errors."""

from __future__ import annotations

import urllib.error
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm
from helpers.hostile import hostile_torch_files
from torch import nn

from flowerpipe.core.errors import ConfigError, FlowerpipeError
from flowerpipe.model.build import build_model, load_trained, replace_head, save_trained

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RESNET18_FILE = Path(tvm.ResNet18_Weights.DEFAULT.url).name  # resnet18-f37072fd.pth


def marked_resnet18_state() -> dict[str, torch.Tensor]:
    """A full torchvision resnet18 state_dict (1000 classes) whose conv1 is all 0.5."""
    torch.manual_seed(0)
    model = tvm.get_model("resnet18", weights=None)
    with torch.no_grad():
        model.conv1.weight.fill_(0.5)
    return model.state_dict()


@dataclass
class TorchHome:
    path: Path
    downloads: list[str] = field(default_factory=list)  # URLs that something tried to download


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TorchHome:
    """An empty TORCH_HOME, and no way to download: any download attempt raises URLError."""
    home = TorchHome(tmp_path / "torch_home")
    monkeypatch.setenv("TORCH_HOME", str(home.path))

    def no_network(url: str, dst: str, *args, **kwargs) -> None:
        home.downloads.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return home


@pytest.mark.parametrize(
    ("arch", "head"),
    [("resnet18", "fc"), ("resnet152", "fc"), ("vgg11", "classifier.6")],
)
def test_random_model_with_new_head(arch: str, head: str) -> None:
    model = build_model(arch, None, 5).eval()
    layer = model.get_submodule(head)
    assert isinstance(layer, nn.Linear)
    assert layer.out_features == 5
    with torch.inference_mode():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 5)
    assert torch.isfinite(out).all()


def test_replace_head_on_a_conv_classifier() -> None:
    model = replace_head(tvm.get_model("squeezenet1_1", weights=None), 4).eval()
    final = model.classifier[1]
    assert isinstance(final, nn.Conv2d)
    assert final.out_channels == 4
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 4)


def test_torch_home_is_read_at_call_time(torch_home: TorchHome) -> None:
    assert Path(torch.hub.get_dir()) == torch_home.path / "hub"


def test_pretrained_weights_come_from_the_torch_hub_cache(torch_home: TorchHome) -> None:
    checkpoints = torch_home.path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(marked_resnet18_state(), checkpoints / RESNET18_FILE)

    model = build_model("resnet18", "DEFAULT", 5)
    assert torch.all(model.conv1.weight == 0.5)
    assert model.fc.out_features == 5
    assert torch_home.downloads == []

    named = build_model("resnet18", "IMAGENET1K_V1", 3)
    assert torch.all(named.conv1.weight == 0.5)
    assert named.fc.out_features == 3


def test_local_state_dict_file(tmp_path: Path) -> None:
    path = tmp_path / "weights" / "my_resnet18.pth"
    path.parent.mkdir()
    torch.save(marked_resnet18_state(), path)
    model = build_model("resnet18", str(path), 5)
    assert torch.all(model.conv1.weight == 0.5)
    assert model.fc.out_features == 5


def test_local_checkpoint_with_state_dict_key(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": marked_resnet18_state(), "epoch": 3}, path)
    assert torch.all(build_model("resnet18", str(path), 2).conv1.weight == 0.5)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # googlenet's note on its default init
def test_local_state_dict_file_for_a_model_with_aux_heads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = tvm.get_model("googlenet", weights=None, init_weights=False)
    with torch.no_grad():
        source.conv1.conv.weight.fill_(0.5)
    path = tmp_path / "googlenet.pth"
    torch.save(source.state_dict(), path)
    model = build_model("googlenet", str(path), 5)
    assert torch.all(model.conv1.conv.weight == 0.5)


@pytest.mark.parametrize("content", ["wrong_arch", "wrong_shapes", "not_torch", "missing"])
def test_local_file_that_does_not_fit_names_model_weights(tmp_path: Path, content: str) -> None:
    path = tmp_path / "weights.pth"
    if content == "wrong_arch":
        torch.save(nn.Linear(3, 2).state_dict(), path)
    elif content == "wrong_shapes":
        torch.save(tvm.get_model("resnet18", weights=None, num_classes=10).state_dict(), path)
    elif content == "not_torch":
        path.write_text("not a checkpoint")
    with pytest.raises(ConfigError) as info:
        build_model("resnet18", str(path), 5)
    assert info.value.key == "model.weights"
    assert str(path) in str(info.value)


@pytest.mark.parametrize("kind", ["text", "empty", "cut_short", "pickle", "torch_pickle"])
def test_a_weights_file_that_does_not_load_is_one_line_naming_model_weights(
    tmp_path: Path, kind: str
) -> None:
    files, marker = hostile_torch_files(tmp_path)
    with pytest.raises(ConfigError) as info:
        build_model("resnet18", str(files[kind]), 5)
    message = str(info.value)
    assert message.startswith(f"params.yaml: model.weights: {files[kind]}: not a loadable state_dict (")
    assert "\n" not in message and "()" not in message and len(message) < 300
    assert not marker.exists()  # the pickle was refused, never run


def test_a_trained_model_file_of_another_shape_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "best.pt"
    torch.save({"state_dict": {}, "arch": "resnet18"}, path)
    with pytest.raises(
        FlowerpipeError, match=r"best\.pt: not a model flowerpipe trained \(a mapping without classes\)$"
    ):
        load_trained(path)


def test_offline_without_cached_weights_says_where_to_put_them(torch_home: TorchHome) -> None:
    with pytest.raises(ConfigError) as info:
        build_model("resnet18", "DEFAULT", 5)
    message = str(info.value)
    assert info.value.key == "model.weights"
    assert RESNET18_FILE in message
    assert "checkpoints" in message
    assert str(torch_home.path / "hub" / "checkpoints" / RESNET18_FILE) in message
    assert torch_home.downloads == [tvm.ResNet18_Weights.DEFAULT.url]


def test_unknown_weights_name(torch_home: TorchHome) -> None:
    with pytest.raises(ConfigError, match="IMAGENET1K_V9") as info:
        build_model("resnet18", "IMAGENET1K_V9", 5)
    assert info.value.key == "model.weights"
    assert "IMAGENET1K_V1" in str(info.value)  # the known names are listed
    assert torch_home.downloads == []


def test_save_and_load_trained_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = build_model("resnet18", None, 3)
    # make the BatchNorm statistics non-trivial, so that buffers must round-trip too
    model.train()
    with torch.no_grad():
        model(torch.rand(4, 3, 32, 32) * 3)
    model.eval()
    path = tmp_path / "models" / "best.pt"
    save_trained(model, path, arch="resnet18", classes=["a", "b", "c"], image_size=32, epoch=2)
    loaded, meta = load_trained(path)
    assert meta == {"arch": "resnet18", "classes": ["a", "b", "c"], "image_size": 32, "epoch": 2}
    assert not loaded.training
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert [p.name for p in path.parent.iterdir()] == ["best.pt"]  # no temporary file left
