"""Prefill latency on CPU: SparseCut against transformers' LLaVA, same weights.

Five models share one randomly initialised mid-size LLaVA (CLIP 256 wide x 8
layers at 224 px / patch 14, Llama 768 wide x 8 layers, vocab 32000):

    a  llava              transformers LLaVA, low-res view only (256 visual positions)
    b  sparsecut-llava    SparseCut, `llava` pattern: the same model, wrapped
    c  sparsecut-lowres   SparseCut, sparse-uniform n=4, xattn adapter, low-res only
    d  llava-5views       transformers LLaVA, low-res + 2x2 crops as 5 images (1280 positions)
    e  sparsecut-hires    SparseCut, sparse-uniform n=4, hi_res (5 views through the ViT, 256 positions)

Prefill is one forward over the whole prompt with use_cache=True and
logits_to_keep=1, as `generate` runs it. Targets (SPEC "Cost"): c/a <= 1.05
(SparseCut costs about what LLaVA costs at the same resolution) and e/d <= 0.35
(fusing high resolution without lengthening the context is much cheaper than
concatenating the views).

    python benchmarks/prefill.py [--batch-size 1] [--rounds 15] [--warmup 3]
                                 [--text-tokens 64] [--threads N] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time

import torch
import transformers
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from sparsecut_core.model.modeling import SparseCutForConditionalGeneration

SEED = 0
IMAGE_TOKEN_ID = 31999  # inside the vocab, so LLaVA needs no resized embeddings
VOCAB = 32000
CROP_GRID = (2, 2)
NUM_VIEWS = 1 + CROP_GRID[0] * CROP_GRID[1]
LOGIT_TOLERANCE = 1e-4
TARGET_LOWRES = 1.05
TARGET_HIRES = 0.35


def mid_size_llava() -> LlavaForConditionalGeneration:
    vision = CLIPVisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=8,
                              image_size=224, patch_size=14)
    text = LlamaConfig(hidden_size=768, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=12,
                       vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN_ID)
    torch.manual_seed(SEED)
    return LlavaForConditionalGeneration(config).eval()


def visual_tokens_per_view(llava: LlavaForConditionalGeneration) -> int:
    side = llava.config.vision_config.image_size // llava.config.vision_config.patch_size
    return side * side  # CLS dropped (LLaVA's "default" feature selection)


def prompt_ids(batch: int, text_tokens: int, image_tokens: int, generator: torch.Generator) -> torch.Tensor:
    """[batch, text_tokens + image_tokens]: the image's placeholders sit between two halves of the text."""
    before = text_tokens // 2
    ids = torch.randint(3, IMAGE_TOKEN_ID, (batch, text_tokens + image_tokens), generator=generator)
    ids[:, before:before + image_tokens] = IMAGE_TOKEN_ID
    return ids


def build_cases(args: argparse.Namespace) -> tuple[dict, LlavaForConditionalGeneration]:
    llava = mid_size_llava()
    m_v = visual_tokens_per_view(llava)
    size = llava.config.vision_config.image_size
    g = torch.Generator().manual_seed(SEED + 1)
    # one image = its low-res view and the crops of its high-res view; every model sees the same pixels
    views = torch.randn(args.batch_size, NUM_VIEWS, 3, size, size, generator=g)
    low_ids = prompt_ids(args.batch_size, args.text_tokens, m_v, g)
    # the 5-view baseline keeps the same text and lays the 5 views' placeholders end to end
    five_ids = prompt_ids(args.batch_size, args.text_tokens, NUM_VIEWS * m_v, torch.Generator().manual_seed(SEED + 2))
    before = args.text_tokens // 2
    five_ids[:, :before] = low_ids[:, :before]
    five_ids[:, before + NUM_VIEWS * m_v:] = low_ids[:, before + m_v:]

    # from_llava takes the LLaVA modules over (and wraps its decoder layers), so each SparseCut gets its own copy
    sparse = dict(pattern="sparse-uniform", num_shortcuts=4)
    models = {
        "b": SparseCutForConditionalGeneration.from_llava(copy.deepcopy(llava)).eval(),
        "c": SparseCutForConditionalGeneration.from_llava(copy.deepcopy(llava), **sparse).eval(),
        "e": SparseCutForConditionalGeneration.from_llava(copy.deepcopy(llava), **sparse, hi_res=True,
                                                          crop_grid=list(CROP_GRID)).eval(),
    }
    low_pixels = views[:, 0].contiguous()
    five_pixels = views.flatten(0, 1).contiguous()  # [batch * 5, 3, H, W]: 5 images per sample, in prompt order

    def case(name, model, ids, pixels, positions):
        return dict(name=name, model=model, positions=positions,
                    inputs=dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels,
                                use_cache=True, logits_to_keep=1))

    cases = {
        "a": case("llava", llava, low_ids, low_pixels, m_v),
        "b": case("sparsecut-llava", models["b"], low_ids, low_pixels, m_v),
        "c": case("sparsecut-lowres", models["c"], low_ids, low_pixels, m_v),
        "d": case("llava-5views", llava, five_ids, five_pixels, NUM_VIEWS * m_v),
        "e": case("sparsecut-hires", models["e"], low_ids, views, m_v),
    }
    return cases, llava


@torch.inference_mode()
def prefill(case: dict) -> torch.Tensor:
    return case["model"](**case["inputs"]).logits


def check_correctness(cases: dict) -> float:
    """Refuses to time a broken model: the `llava` pattern must reproduce LLaVA's last-position logits."""
    expected, got = prefill(cases["a"]), prefill(cases["b"])
    if expected.shape != got.shape or expected.shape[1] != 1:
        raise AssertionError(f"logits shapes differ or keep more than one position: {expected.shape} vs {got.shape}")
    diff = (got - expected).abs().max().item()
    if not diff < LOGIT_TOLERANCE:
        raise AssertionError(f"sparsecut-llava differs from LLaVA: max |logit diff| = {diff:.3g}")
    for key in "cde":
        logits = prefill(cases[key])
        if not torch.isfinite(logits).all():
            raise AssertionError(f"{cases[key]['name']} gives non-finite logits")
    return diff


def time_rounds(cases: dict, warmup: int, rounds: int) -> dict[str, list[float]]:
    """Milliseconds per prefill; each round runs every model once, the order rotating so no model always goes first."""
    keys = list(cases)
    times: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(warmup + rounds):
        shift = r % len(keys)
        for key in keys[shift:] + keys[:shift]:
            start = time.perf_counter()
            prefill(cases[key])
            elapsed = (time.perf_counter() - start) * 1e3
            if r >= warmup:
                times[key].append(elapsed)
    return times


def quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")  # never outside the observed range
    return q[0], q[2]


def ratio(times: dict, num: str, den: str, target: float) -> dict:
    of_medians = statistics.median(times[num]) / statistics.median(times[den])
    # rounds are interleaved, so a per-round ratio cancels slow drifts of the machine
    paired = statistics.median(n / d for n, d in zip(times[num], times[den]))
    return dict(ratio=of_medians, paired_ratio=paired, target=target, passed=of_medians <= target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds (each runs every model once)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds before them")
    parser.add_argument("--text-tokens", type=int, default=64, help="text tokens around the image")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers here")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.rounds < 1 or args.warmup < 0 or args.text_tokens < 0:
        parser.error("--batch-size and --rounds must be >= 1, --warmup and --text-tokens >= 0")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    # other busy processes make OpenMP threads wait on each other and inflate every timing several-fold
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    cases, _ = build_cases(args)
    diff = check_correctness(cases)
    times = time_rounds(cases, args.warmup, args.rounds)

    print(f"prefill, fp32 CPU, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{args.text_tokens} text tokens, {args.warmup} warm-up + {args.rounds} timed rounds")
    if load_before is not None and load_before > 0.5 * (os.cpu_count() or 1):
        print(f"warning: 1-min load average was {load_before:.2f} at start; other processes may skew the timings")
    print(f"check: sparsecut-llava vs llava last-position logits, max |diff| = {diff:.2e} (< {LOGIT_TOLERANCE:g})")
    print()
    header = f"{'':2} {'model':<18} {'visual pos':>10} {'context':>8} {'median ms':>10} {'q1-q3 ms':>16}"
    print(header)
    print("-" * len(header))
    rows = {}
    for key, case in cases.items():
        t = times[key]
        q1, q3 = quartiles(t)
        context = case["inputs"]["input_ids"].shape[1]
        rows[key] = dict(name=case["name"], visual_positions=case["positions"], context_length=context,
                         median_ms=statistics.median(t), q1_ms=q1, q3_ms=q3, times_ms=t)
        print(f"{key:2} {case['name']:<18} {case['positions']:>10} {context:>8} {statistics.median(t):>10.1f} "
              f"{f'{q1:.1f}-{q3:.1f}':>16}")
    print()
    ratios = {
        "b/a": ratio(times, "b", "a", TARGET_LOWRES),
        "c/a": ratio(times, "c", "a", TARGET_LOWRES),
        "e/d": ratio(times, "e", "d", TARGET_HIRES),
    }
    notes = {
        "b/a": "llava pattern vs LLaVA (wrapping overhead, for information)",
        "c/a": "low-res SparseCut vs LLaVA (headline)",
        "e/d": "hi-res SparseCut vs 5-view LLaVA",
    }
    for name, r in ratios.items():
        verdict = "PASS" if r["passed"] else "MISS"
        if name == "b/a":
            verdict = f"({verdict})"
        print(f"{name}  {r['ratio']:.3f}  (paired {r['paired_ratio']:.3f})  target <= {r['target']:.2f}  "
              f"{verdict:<6}  {notes[name]}")

    if args.json:
        report = dict(
            settings=dict(batch_size=args.batch_size, rounds=args.rounds, warmup=args.warmup,
                          text_tokens=args.text_tokens, threads=torch.get_num_threads(), dtype="float32"),
            environment=dict(python=platform.python_version(), torch=torch.__version__,
                             transformers=transformers.__version__, machine=platform.machine(),
                             processor=platform.processor(), load_average_at_start=load_before),
            logits_max_abs_diff_b_vs_a=diff,
            models=rows,
            ratios=ratios,
        )
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
