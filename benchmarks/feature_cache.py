"""Finetune steps of the `tiny-dinov2` preset (DINOv2-small frozen + tiny LLM) with and without the
frozen tower's feature cache, timed in alternation in one process.

Both models start from the same weights and see the same batches. "cold" is a step over images the
cache has not seen (the first epoch), "warm" one over images it holds (every later epoch); "off"
runs the tower at every step. Prints median step times and the ratios warm/off and cold/off.

    python benchmarks/feature_cache.py                   # 8 batches of 16, 3 rounds
    python benchmarks/feature_cache.py --batches 4 --json cache.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

from sparsecut_core.data.batching import Collator, encode_records
from sparsecut_core.data.records import SkipCounter, load_records
from sparsecut_core.model.feature_cache import VisionFeatureCache
from sparsecut_core.presets.build import build_from_preset
from sparsecut_core.presets.preset import load_preset
from sparsecut_core.training.config import TrainConfig
from sparsecut_core.training.setup import prepare_model


def batches(processor, count: int, size: int) -> list[dict]:
    records, source = load_records(f"shapes:train:{count * size}", image_size=processor.full_view_size)
    dataset = encode_records(records, processor, template="vicuna_v1", max_length=512, skips=SkipCounter())
    rows = [dataset[k] for k in range(len(dataset))]
    collate = Collator(processor, records, source)
    batched = [collate(rows[k:k + size]) for k in range(0, len(rows), size)]
    return [{name: value for name, value in batch.items() if name != "bad_samples"} for batch in batched]


def step(model, optimizer, batch) -> float:
    start = time.perf_counter()
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, processor = build_from_preset(load_preset("tiny-dinov2"), cache_dir=Path.home() / ".cache" / "sparsecut")
    config = TrainConfig(stage="finetune", output_dir="unused", learning_rate=1e-3, global_batch_size=16)
    models = {"off": prepare_model(model, config), "cache": prepare_model(copy.deepcopy(model), config)}
    models["cache"].feature_cache = VisionFeatureCache()
    optimizers = {name: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
                  for name, m in models.items()}
    data = batches(processor, args.batches, args.batch_size)
    times: dict[str, list[float]] = {"off": [], "cold": [], "warm": []}
    for round_ in range(args.rounds):
        for batch in data:
            times["off"].append(step(models["off"], optimizers["off"], batch))
            label = "cold" if round_ == 0 else "warm"
            times[label].append(step(models["cache"], optimizers["cache"], batch))
    median = {name: statistics.median(values) for name, values in times.items()}
    result = {"step_s": median, "warm/off": median["warm"] / median["off"], "cold/off": median["cold"] / median["off"],
              "batches": args.batches, "batch_size": args.batch_size, "rounds": args.rounds,
              "threads": args.threads, "cached_images": len(models["cache"].feature_cache),
              "cached_mib": models["cache"].feature_cache.bytes / 2**20}
    print(f"median step: off {median['off']:.3f} s, cold {median['cold']:.3f} s, warm {median['warm']:.3f} s")
    print(f"warm/off {result['warm/off']:.3f}   cold/off {result['cold/off']:.3f}   "
          f"({result['cached_images']} images, {result['cached_mib']:.0f} MiB cached)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
