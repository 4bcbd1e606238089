"""`sparsecut serve` under load: N concurrent clients on loopback, batching against one request at a time.

One process builds the model once and serves it twice, with uvicorn on a free loopback
port: with dynamic batching (--max-batch-size) and one request at a time (max batch 1).
The same N client threads (the official openai client) each send the same requests
(an image and a question, greedy, --max-tokens new tokens) until each has sent
--requests or --max-seconds have passed. Reported per mode: requests and generated
tokens per second, p50/p99 latency, lost or failed requests (must be 0), the batch sizes
the engine ran; and the throughput ratio batched / one at a time. Greedy answers must
be the same in both modes (checked).

    python benchmarks/serve.py [--clients 8] [--requests 6] [--max-tokens 16] [--max-seconds 120]
                               [--model DIR] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import platform
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch
from openai import OpenAI

from sparsecut_core.data.shapes import shapes_sample
from sparsecut_core.inference.loading import load_pretrained
from sparsecut_core.presets.build import build_from_preset
from sparsecut_core.presets.preset import load_preset
from sparsecut_core.serving.app import ServerSettings, create_app
from sparsecut_core.serving.engine import Engine
from sparsecut_core.serving.server import serve_in_thread

QUESTIONS = ["How many shapes are there?", "What colour is the circle?", "Is there a square in the image?",
             "Where is the triangle?", "What shape is the red thing?", "Describe the image."]


def image_url(index: int) -> str:
    buffer = io.BytesIO()
    shapes_sample("test", index, 224).image.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def run_clients(url: str, clients: int, requests: int, max_tokens: int, max_seconds: float, images: list[str]) -> dict:
    deadline = time.monotonic() + max_seconds
    lock, latencies, failures, answers, tokens = threading.Lock(), [], [], {}, [0]

    def client(k: int) -> None:
        api = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=max_seconds + 60)
        for r in range(requests):
            if time.monotonic() > deadline:
                return
            key = (k, r)
            messages = [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": images[(k + r) % len(images)]}},
                {"type": "text", "text": QUESTIONS[(k * 7 + r) % len(QUESTIONS)]}]}]
            start = time.perf_counter()
            try:
                reply = api.chat.completions.create(model="bench", messages=messages, max_tokens=max_tokens)
            except Exception as err:  # every failure is counted and reported
                with lock:
                    failures.append(f"{key}: {type(err).__name__}: {err}")
                continue
            with lock:
                latencies.append(time.perf_counter() - start)
                answers[key] = reply.choices[0].message.content
                tokens[0] += reply.usage.completion_tokens

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - start
    return {"wall_s": wall, "latencies": latencies, "failures": failures, "answers": answers, "tokens": tokens[0]}


def measure(model, processor, batch: int, args, images: list[str]) -> dict:
    engine = Engine(model, processor, max_batch_size=batch, max_queue=max(64, args.clients))
    with serve_in_thread(create_app(engine, ServerSettings("bench"))) as url:
        run_clients(url, min(2, args.clients), 1, 2, 30, images)  # warm-up, not counted
        engine.batch_sizes.clear()
        got = run_clients(url, args.clients, args.requests, args.max_tokens, args.max_seconds, images)
    done = len(got["latencies"])
    ordered = sorted(got["latencies"])
    return {
        "max_batch_size": batch, "completed": done, "failed": len(got["failures"]),
        "failures": got["failures"][:5], "wall_s": round(got["wall_s"], 2),
        "requests_per_s": round(done / got["wall_s"], 3), "tokens_per_s": round(got["tokens"] / got["wall_s"], 2),
        "p50_s": round(statistics.median(ordered), 3) if ordered else None,
        "p99_s": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 3) if ordered else None,
        "mean_batch": round(statistics.mean(engine.batch_sizes), 2) if engine.batch_sizes else None,
        "answers": got["answers"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=6, help="requests per client at most")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--max-seconds", type=float, default=120.0, help="per mode: no new request after this")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--model", help="saved model folder (default: the tiny preset, random weights)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--json", help="write the numbers here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.model:
        model, processor = load_pretrained(args.model)
    else:
        model, processor = build_from_preset(load_preset("tiny"), seed=0)
    model.eval()
    images = [image_url(i) for i in range(4)]
    batched = measure(model, processor, args.max_batch_size, args, images)
    single = measure(model, processor, 1, args, images)
    same = {k: v for k, v in batched["answers"].items() if k in single["answers"]}
    mismatched = sum(v != single["answers"][k] for k, v in same.items())
    expected = args.clients * args.requests
    lost = {name: expected - r["completed"] - r["failed"] for name, r in (("batched", batched), ("single", single))}
    result = {
        "model": args.model or "tiny preset (random weights)", "clients": args.clients, "requests": args.requests,
        "max_tokens": args.max_tokens, "threads": args.threads, "torch": torch.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "batched": {k: v for k, v in batched.items() if k != "answers"},
        "one_at_a_time": {k: v for k, v in single.items() if k != "answers"},
        "throughput_ratio": round(batched["requests_per_s"] / single["requests_per_s"], 2),
        "not_sent_in_time": lost, "greedy_answers_differ": mismatched,
    }
    print(f"{args.clients} clients x {args.requests} requests, {args.max_tokens} new tokens, {result['model']}")
    print(f"{'mode':<16}{'done':>6}{'failed':>8}{'req/s':>8}{'tok/s':>8}{'p50 s':>8}{'p99 s':>8}{'batch':>7}")
    for name, r in (("batched", batched), ("one at a time", single)):
        print(f"{name:<16}{r['completed']:>6}{r['failed']:>8}{r['requests_per_s']:>8.2f}{r['tokens_per_s']:>8.1f}"
              f"{r['p50_s']:>8.2f}{r['p99_s']:>8.2f}{r['mean_batch']:>7.2f}")
    print(f"throughput batched / one at a time: {result['throughput_ratio']:.2f}x; "
          f"greedy answers that differ: {mismatched}; not sent before --max-seconds: {lost}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=2)
    if batched["failed"] or single["failed"] or mismatched:
        sys.exit(1)


if __name__ == "__main__":
    main()
