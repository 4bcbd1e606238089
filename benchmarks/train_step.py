"""Training-step throughput and peak memory: SparseCut against transformers' LLaVA, same loop.

One training step = forward with labels, backward, AdamW step, zero_grad, on a batch
of image+text samples, with the finetune stage's trainable parts (adapter/projector
+ LLM; ViT frozen). Rows, all from one random-weight LLaVA:

    llava              transformers LlavaForConditionalGeneration (low-res)
    sparsecut-llava    SparseCut with the `llava` pattern + mlp adapter: the same model, wrapped
    sparsecut-lowres   SparseCut, sparse-uniform, xattn adapter, low-res only
    sparsecut-hires    SparseCut, sparse-uniform, xattn adapter, hi-res fusion (5 views, same context)

Throughput rounds alternate between the models in this process (the machine is
noisy), so the printed ratios compare like with like. Peak memory: CUDA's
max_memory_allocated per model on a GPU; on CPU each model runs once more in a
child process whose peak RSS is read (the parent's RSS cannot be reset).

    python benchmarks/train_step.py [--size tiny|mid|smollm2|7b] [--batch-size 4] [--text-tokens 64]
                                    [--rounds 5] [--bf16] [--gradient-checkpointing] [--json out.json]

`--size smollm2` has the smollm2-135m preset's dims (its ViT; SmolLM2-135M, 30 layers, tied
embeddings), random weights: speed does not depend on the values. `--size 7b` (Vicuna-7B +
CLIP ViT-L/14-336 dims, random weights) needs a large GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from sparsecut_core.model.freezing import set_trainable
from sparsecut_core.model.modeling import SparseCutForConditionalGeneration

IMAGE_TOKEN_ID = 3
SIZES = {
    # vision (width, layers, heads, image, patch), llm (width, ffn, layers, heads, kv heads, vocab)
    "tiny": ((64, 6, 4, 56, 8), (96, 192, 6, 4, 4, 512)),
    "mid": ((256, 8, 8, 224, 14), (768, 2048, 8, 12, 12, 32000)),
    # the smollm2-135m preset's parts: its ViT, and SmolLM2-135M's architecture (+ <image>)
    "smollm2": ((192, 6, 3, 112, 16), (576, 1536, 30, 9, 3, 49153)),
    "7b": ((1024, 24, 16, 336, 14), (4096, 11008, 32, 32, 32, 32000)),
}
ROWS = ("llava", "sparsecut-llava", "sparsecut-lowres", "sparsecut-hires")


def base_llava(size: str, attn: str) -> LlavaForConditionalGeneration:
    (vw, vl, vh, image, patch), (tw, tf, tl, th, kv, vocab) = SIZES[size]
    vision = CLIPVisionConfig(hidden_size=vw, intermediate_size=4 * vw, num_hidden_layers=vl, num_attention_heads=vh,
                              image_size=image, patch_size=patch)
    text = LlamaConfig(hidden_size=tw, intermediate_size=tf, num_hidden_layers=tl, num_attention_heads=th,
                       num_key_value_heads=kv, vocab_size=vocab, tie_word_embeddings=size == "smollm2",
                       pad_token_id=0, bos_token_id=1, eos_token_id=2)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN_ID)
    config._attn_implementation = attn
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(config)


def build(row: str, size: str, attn: str):
    llava = base_llava(size, attn)
    if row == "llava":
        for name, param in llava.named_parameters():
            param.requires_grad_(not name.startswith("model.vision_tower"))
        return llava
    layers = llava.config.text_config.num_hidden_layers
    n = 4 if size == "smollm2" else max(2, min(8, layers // 4))  # smollm2: as its preset
    design = {"sparsecut-llava": dict(pattern="llava", adapter="mlp"),
              "sparsecut-lowres": dict(pattern="sparse-uniform", num_shortcuts=n),
              "sparsecut-hires": dict(pattern="sparse-uniform", num_shortcuts=n, hi_res=True)}[row]
    model = SparseCutForConditionalGeneration.from_llava(llava, **design)
    set_trainable(model, "finetune")
    return model


def batch_for(model, batch_size: int, text_tokens: int, device) -> dict[str, torch.Tensor]:
    vision = model.config.vision_config
    m_v = (vision.image_size // vision.patch_size) ** 2
    g = torch.Generator().manual_seed(1)
    text = torch.randint(10, model.config.text_config.vocab_size, (batch_size, text_tokens), generator=g)
    ids = torch.cat([torch.full((batch_size, m_v), IMAGE_TOKEN_ID), text], dim=1)
    labels = ids.clone()
    labels[:, :m_v] = -100
    views = getattr(model.config, "num_views", 1) if getattr(model.config, "hi_res", False) else 1
    shape = (batch_size, views, 3, vision.image_size, vision.image_size) if views > 1 else \
        (batch_size, 3, vision.image_size, vision.image_size)
    pixels = torch.randn(shape, generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "labels": labels.to(device), "pixel_values": pixels.to(device)}


class Runner:
    """One model with its optimizer and batch: `step()` is one timed training step."""

    def __init__(self, row, args, device, dtype):
        # built on the device in its dtype: random init of a 7B model on the CPU takes minutes
        default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with device:
                self.model = build(row, args.size, args.attn).train()
        finally:
            torch.set_default_dtype(default_dtype)
        self.checkpointing = args.gradient_checkpointing
        if self.checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-5, weight_decay=0.0, fused=device.type == "cuda")
        self.batch = batch_for(self.model, args.batch_size, args.text_tokens, device)
        self.batch["pixel_values"] = self.batch["pixel_values"].to(dtype)
        self.tokens = int(self.batch["attention_mask"].sum())
        self.device = device

    def step(self) -> float:
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        loss = self.model(**self.batch).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - start


def train_flops(runner: Runner) -> float:
    """Model FLOPs of one step: fwd + bwd counted by torch's FlopCounterMode, without recomputation.

    Counted on one sample with gradient checkpointing off (its recomputed forward is
    not model work, so MFU leaves it out) and scaled by the batch size.
    """
    from torch.utils.flop_counter import FlopCounterMode

    one = {name: t[:1] for name, t in runner.batch.items()}
    if runner.checkpointing:
        runner.model.gradient_checkpointing_disable()
    with FlopCounterMode(display=False) as counter:
        runner.model(**one).loss.backward()
    if runner.checkpointing:
        runner.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    runner.optimizer.zero_grad(set_to_none=True)
    return float(counter.get_total_flops()) * runner.batch["input_ids"].shape[0]


def child_peak_rss_mib(row: str, argv: list[str]) -> float:
    """Peak RSS of a child process that builds `row` and runs two steps (CPU memory, MiB).

    Read from /proc/self/status (VmHWM, the child's own address space): getrusage's
    ru_maxrss survives fork + exec on Linux, so it reports at least the parent's RSS.
    """
    code = ("import sys; sys.argv = {argv!r}; import benchmarks.train_step as b; b.one_row({row!r}); "
            "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
    out = subprocess.run([sys.executable, "-c", code.format(argv=["train_step", *argv], row=row)],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def one_row(row: str) -> None:
    args = parse_args()
    runner = Runner(row, args, torch.device("cpu"), torch.float32)
    runner.step()
    runner.step()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--attn", default="sdpa", help="sdpa | eager | flash_attention_2")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="GPU bf16 dense peak for MFU (H100: 989)")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--json", default=None)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    rows = args.rows.split(",")
    runners = {row: Runner(row, args, device, dtype) for row in rows} if device.type == "cpu" else None
    results = {}
    if device.type == "cuda":  # one model on the GPU at a time: a 7B model and its optimizer fill it
        for row in rows:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            runner = Runner(row, args, device, dtype)
            for _ in range(args.warmup):
                runner.step()
            times = [runner.step() for _ in range(args.rounds)]
            flops = train_flops(runner)
            results[row] = {"step_s": statistics.median(times), "peak_mib": torch.cuda.max_memory_allocated() / 2**20,
                            "tokens": runner.tokens, "flops": flops}
            del runner
    else:
        for runner in runners.values():
            for _ in range(args.warmup):
                runner.step()
        times = {row: [] for row in rows}
        for _ in range(args.rounds):  # alternate, so load changes hit every model alike
            for row in rows:
                times[row].append(runners[row].step())
        argv = sys.argv[1:]
        for row in rows:
            results[row] = {"step_s": statistics.median(times[row]), "peak_mib": child_peak_rss_mib(row, argv),
                            "tokens": runners[row].tokens, "flops": train_flops(runners[row])}
    base = results.get("llava") or next(iter(results.values()))
    print(f"train step, size {args.size}, batch {args.batch_size}, text tokens {args.text_tokens}, "
          f"{device.type} {'bf16' if args.bf16 else 'fp32'}, torch {torch.__version__}, {platform.machine()}")
    print(f"{'row':18} {'step s':>8} {'samples/s':>10} {'tokens/s':>10} {'peak MiB':>9} {'MFU':>6} "
          f"{'time/llava':>10} {'mem/llava':>9}")
    for row, r in results.items():
        r["samples_per_s"] = args.batch_size / r["step_s"]
        r["tokens_per_s"] = r["tokens"] / r["step_s"]
        r["mfu"] = r["flops"] / r["step_s"] / (args.peak_tflops * 1e12) if device.type == "cuda" else None
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        print(f"{row:18} {r['step_s']:8.3f} {r['samples_per_s']:10.2f} {r['tokens_per_s']:10.0f} "
              f"{r['peak_mib']:9.0f} {mfu:>6} {r['step_s'] / base['step_s']:10.3f} "
              f"{r['peak_mib'] / base['peak_mib']:9.3f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
