"""Placing a model for inference: the device, the dtype, and bitsandbytes quantization of the LLM.

Only the LLM's decoder linears are quantized (NF4 with double quantization, or
LLM.int8()); the vision tower, the adapter and the LM head keep full weights, in
half precision on CUDA and float32 on CPU, as LLaVA's 4-/8-bit loading does for
its projector. transformers applies bitsandbytes while it loads weights, so a
model built in memory is quantized through a temporary `save_pretrained`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from transformers import BitsAndBytesConfig

from ..model.modeling import SparseCutForConditionalGeneration

QUANTIZE_MODES = ("4bit", "8bit")
DEVICES = ("auto", "cpu", "cuda")
# Top-level modules (prefixes) kept out of quantization; transformers matches a prefix up to a
# module boundary, so "adapter" covers adapter.adapters.0.block.attn.q_proj and the rest.
SKIP_MODULES = ["vision_tower", "adapter", "language_model.lm_head"]


class QuantizationUnavailable(ValueError):
    """bitsandbytes cannot quantize (or run the quantized LLM) on this device."""


def resolve_device(name: str | torch.device) -> torch.device:
    """`auto` -> cuda when available, else cpu; asking for cuda without one is a clear error."""
    if isinstance(name, torch.device):
        return name
    if name not in DEVICES:
        raise ValueError(f"device: expected one of {', '.join(DEVICES)}, got {name!r}")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"device cuda: CUDA is not available (torch {torch.__version__}); use --device cpu")
    return torch.device("cuda", torch.cuda.current_device())


def inference_dtype(device: torch.device) -> torch.dtype:
    """Half precision on CUDA (bf16 where the GPU has it), float32 on CPU."""
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def compute_dtype(device: torch.device) -> torch.dtype:
    """The 4-bit matmul dtype: bf16 (the bitsandbytes CPU backend has it too), fp16 on older GPUs."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def bnb_config(mode: str, compute: torch.dtype = torch.bfloat16) -> BitsAndBytesConfig:
    """NF4 + double quantization with `compute` matmuls (4bit), or LLM.int8() (8bit), for the LLM only."""
    if mode == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
            llm_int8_skip_modules=list(SKIP_MODULES),
        )
    if mode == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(SKIP_MODULES))
    raise ValueError(f"quantize: expected one of {', '.join(QUANTIZE_MODES)}, got {mode!r}")


def place(model: SparseCutForConditionalGeneration, device: torch.device) -> SparseCutForConditionalGeneration:
    """A full-precision model moved to `device` in its inference dtype, in eval mode."""
    return model.to(device=device, dtype=inference_dtype(device)).eval()


def load_quantized(
    source: str | Path | SparseCutForConditionalGeneration, mode: str, device: torch.device
) -> SparseCutForConditionalGeneration:
    """A saved model folder (or a model in memory) with its LLM quantized by bitsandbytes on `device`.

    Raises QuantizationUnavailable (one line: mode, device, reason, the way out) when bitsandbytes
    is missing or has no kernels for `device`: the quantized LLM is run once on one token here,
    so that a backend that loads but cannot compute fails at load time, not mid-answer.
    """
    config = bnb_config(mode, compute_dtype(device))
    try:
        if isinstance(source, SparseCutForConditionalGeneration):
            with tempfile.TemporaryDirectory(prefix="sparsecut-quantize-") as folder:
                source.save_pretrained(folder)
                model = _from_pretrained(folder, config, device)
        else:
            model = _from_pretrained(source, config, device)
        if mode == "4bit" and device.type == "cpu":
            restrict_cpu_packing(model)
        _check_llm_runs(model)
    except (ImportError, RuntimeError, NotImplementedError) as err:
        reason = (str(err).strip().splitlines() or [""])[0] or type(err).__name__
        raise QuantizationUnavailable(
            f"{mode} quantization is not available on {device.type}: {reason}; "
            f"run without --load-{mode} (full precision)"
        ) from err
    return model


def _from_pretrained(
    folder: str | Path, config: BitsAndBytesConfig, device: torch.device
) -> SparseCutForConditionalGeneration:
    # LLM.int8() computes in fp16 on CUDA whatever its inputs, so feed it fp16 there (as LLaVA does)
    dtype = torch.float16 if config.load_in_8bit and device.type == "cuda" else inference_dtype(device)
    # device_map puts the whole model on one device; dtype applies to every module left unquantized
    model = SparseCutForConditionalGeneration.from_pretrained(
        folder, quantization_config=config, device_map={"": device}, dtype=dtype
    )
    return model.eval()


# bitsandbytes' AVX512-BF16 CPU path repacks a 4-bit weight [N, K] in blocks of 32 rows and
# reshapes its absmax to [N, K // blocksize] (bitsandbytes.functional._convert_weight_packed_for_cpu).
CPU_PACK_ROWS = 32


def cpu_packable(module: torch.nn.Module) -> bool:
    """Whether bitsandbytes' AVX512-BF16 CPU kernel can take this Linear4bit's weight shape."""
    state = module.weight.quant_state
    rows, cols = state.shape
    return rows % CPU_PACK_ROWS == 0 and cols % state.blocksize == 0


def restrict_cpu_packing(model: torch.nn.Module) -> list[str]:
    """Send the 4-bit linears the AVX512-BF16 CPU kernel cannot take down bitsandbytes' generic path.

    On a CPU with AVX512-BF16 bitsandbytes repacks every 4-bit weight at its first inference
    forward and fails on shapes it cannot tile (the tiny preset's 96-wide projections: "shape
    '[96, 1]' is invalid for input of size 144"); elsewhere it always dequantizes and multiplies.
    Those layers stay 4-bit and take the dequantizing path, which works for every shape.
    Returns their names.
    """
    import bitsandbytes as bnb

    generic = []
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit) and getattr(module, "support_avx512bf16_for_cpu", False):
            if not cpu_packable(module):
                module.support_avx512bf16_for_cpu = False
                generic.append(name)
    return generic


@torch.inference_mode()
def _check_llm_runs(model: SparseCutForConditionalGeneration) -> None:
    """One decoder step on a single token (BOS, else id 0) through the quantized LLM."""
    token = model.config.text_config.bos_token_id
    ids = torch.tensor([[token if isinstance(token, int) else 0]], device=model.device)
    model.language_model(input_ids=ids, use_cache=False)


def quantized_module_names(model: torch.nn.Module) -> list[str]:
    """Names of the bitsandbytes 4-/8-bit linear layers in `model` (what --load-4bit/8bit changed)."""
    import bitsandbytes as bnb

    kinds = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    return [name for name, module in model.named_modules() if isinstance(module, kinds)]
