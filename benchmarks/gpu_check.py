"""GPU check: the runtime on CUDA against the CPU, flagged-path overhead and batched throughput on a realistic shape.

Run with ``python -m lethe.benchmarks.gpu_check [--tiny PATH] [--out FILE]`` on a machine with a CUDA GPU;
without one it says so and exits with status 2 (nothing is measured). It prints a JSON summary.

1. **noise**: the counter-based corruption noise drawn on CUDA against the CPU (largest difference).
2. **tiny**: the tiny fictitious-authors model (``--tiny``: a built-in name or a prepared folder; building
   it trains a small model first) loaded on the CPU in float32 and on CUDA in float32 and bfloat16:
   greedy tokens of CUDA float32 equal to the CPU's, bfloat16's agreement and right answers, a batch that
   rows join mid-decode equal to solo on CUDA, and a flagged prompt's (corrupted) answer equal on both.
3. **overhead**: a random-weight Llama of Llama-3.2-1B's shape (hidden 2048, 16 layers, GQA 32/8 heads,
   vocab 128256) in bfloat16: latency of a 512-token prompt with an ECO plan (top-k noise over the user
   span and an entity step) against the same prompt unflagged, for a prefill-only request and for 64 new
   tokens (goal: overhead <= 2 %); the plan's own cost; a 20-vector soft prompt separately (it lengthens the
   prompt, so it is not overhead).
4. **throughput**: completion tokens per second of the gateway's continuous batcher (in process, no HTTP)
   with 1, 8 and 32 concurrent requests of 128 new tokens.

``--cpu-smoke`` runs the same steps on the CPU with a small shape, only to show the script works.

On the device machine, lethe's own dependencies (pydantic-settings at least) may need carrying as wheels;
``transformers`` 5.x of any minor version works (the decoder passes the KV cache under the name it takes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from lethe.runtime.generation import SamplingParams, StepEvent
from lethe.runtime.interventions import (
    Corruption,
    EntityStep,
    InterventionPlan,
    corruption_plan,
    soft_prompt_plan,
)
from lethe.runtime.mentions import Mention, MentionIndex
from lethe.runtime.model import LanguageModel
from lethe.runtime.noise import gaussian
from lethe.runtime.settings import RuntimeSettings
from lethe.service.batcher import MicroBatcher

LLAMA_1B = {
    "vocab_size": 128256,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 4096,
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
}


SMOKE_SHAPE = {**LLAMA_1B, "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 32000}  # fmt: skip


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(action: Callable[[], object]) -> float:
    _sync()
    started = time.perf_counter()
    action()
    _sync()
    return time.perf_counter() - started


def noise_check(device: str) -> dict[str, Any]:
    """The same noise values on ``device`` and the CPU (integer hashing is exact; log/cos may differ by ulps)."""
    positions = torch.arange(0, 4096, 7)
    dims = torch.randint(0, 4096, (positions.numel(), 64), generator=torch.Generator().manual_seed(1))
    on_cpu = gaussian(123456789, positions, dims)
    on_gpu = gaussian(123456789, positions.to(device), dims.to(device))
    return {"max_abs_difference": float((on_gpu.cpu() - on_cpu).abs().max()), "values": on_cpu.numel()}


def tiny_check(spec: str, device: str) -> dict[str, Any]:
    """Greedy tokens of the tiny model on ``device`` (float32 and bfloat16) against the CPU's."""
    from lethe.benchmarks.authors_world import WorldConfig, build_world

    def load(device: str, dtype: str) -> LanguageModel:
        return LanguageModel.load(spec, RuntimeSettings(device=device, dtype=dtype))

    cpu, gpu, half = load("cpu", "float32"), load(device, "float32"), load(device, "bfloat16")
    rows = build_world(WorldConfig.test()).rows("retain")[:16]
    prompts = [cpu.chat_prompt([{"role": "user", "content": row["prompt"]}]) for row in rows]
    params = SamplingParams(max_new_tokens=24)
    on_cpu = [cpu.generate(p, params).token_ids for p in prompts]
    on_gpu = [gpu.generate(p, params).token_ids for p in prompts]
    halves = [half.generate(p, params) for p in prompts]

    batch = gpu.open_batch()
    tokens: dict[int, list[int]] = {}

    def run(steps: int | None) -> None:
        done = 0
        while batch and (steps is None or done < steps):
            for event in batch.step():
                if event.token_id is not None:
                    tokens.setdefault(event.row, []).append(event.token_id)
            done += 1

    keys = batch.join([gpu.prompt_embeddings(p) for p in prompts[:8]], [params] * 8)
    run(3)
    keys += batch.join([gpu.prompt_embeddings(p) for p in prompts[8:]], [params] * 8)
    run(None)

    flagged = prompts[0]
    mask = [True] * len(flagged.ids)
    plan = corruption_plan(Corruption("rand_noise_top_k", 0.05, 16), mask, 99)
    flagged_cpu = cpu.generate(flagged, params, plan).token_ids
    flagged_gpu = gpu.generate(flagged, params, plan).token_ids
    return {
        "questions": len(prompts),
        "cuda_float32_equal_to_cpu": sum(a == b for a, b in zip(on_cpu, on_gpu, strict=True)),
        "cuda_bfloat16_equal_to_cpu": sum(a == b.token_ids for a, b in zip(on_cpu, halves, strict=True)),
        "cuda_bfloat16_right_answers": sum(row["value"] in h.text for row, h in zip(rows, halves, strict=True)),
        "cuda_batch_joined_mid_decode_equal_to_solo": sum(
            tokens.get(k, []) == solo for k, solo in zip(keys, on_gpu, strict=True)
        ),
        "flagged_tokens_equal_cpu_cuda": flagged_cpu == flagged_gpu,
    }


def random_llama(tokenizer_spec: str, shape: dict[str, Any], device: str) -> LanguageModel:
    """A random-weight Llama of ``shape`` in bfloat16 on ``device`` (the tiny model's tokenizer, whose
    out-of-vocabulary ids decode to nothing: the text does not matter here)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lethe.runtime.loading import prepare_model

    tokenizer = AutoTokenizer.from_pretrained(prepare_model(tokenizer_spec, RuntimeSettings()))
    config = LlamaConfig(**shape, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    return LanguageModel(model, tokenizer, name="random-llama-1b-shape")


def _random_ids(count: int, seed: int, vocab: int) -> list[int]:
    return torch.randint(4, vocab, (count,), generator=torch.Generator().manual_seed(seed)).tolist()


def _median_ms(action: Callable[[], object], repeats: int) -> float:
    return statistics.median(_timed(action) for _ in range(repeats)) * 1000


def overhead_check(model: LanguageModel, repeats: int) -> dict[str, Any]:
    """Flagged (ECO plan) against unflagged latency of the same 512-token prompt, median of ``repeats`` runs."""
    ids = _random_ids(512, 7, 32000)
    mask = [8 <= i < len(ids) - 8 for i in range(len(ids))]
    hidden = model.hidden_size
    mentions = MentionIndex([Mention(tuple(ids[s : s + 3])) for s in (40, 200, 333)])
    entity = EntityStep(Corruption("rand_noise_top_k", 0.5, hidden), mentions, 5, model.embedder.embedding_weight)
    plan = corruption_plan(Corruption("rand_noise_top_k", 0.5, hidden), mask, 11).then(
        InterventionPlan(entities=(entity,))
    )
    soft = soft_prompt_plan(torch.randn(20, hidden, generator=torch.Generator().manual_seed(3)))
    cases: dict[str, InterventionPlan | None] = {"unflagged": None, "flagged": plan, "soft_prompt": soft}
    out: dict[str, Any] = {"prompt_tokens": len(ids), "repeats": repeats}
    for new_tokens in (1, 64):
        params = SamplingParams(max_new_tokens=new_tokens)
        figures = {}
        for name, case in cases.items():
            model.generate(ids, params, case)  # warm-up
            figures[f"{name}_ms"] = _median_ms(lambda c=case, p=params: model.generate(ids, p, c), repeats)
        figures["overhead_percent"] = (figures["flagged_ms"] / figures["unflagged_ms"] - 1) * 100
        out[f"new_tokens_{new_tokens}"] = figures
    plain = _median_ms(lambda: model.prompt_embeddings(ids), repeats)
    out["plan_application_ms"] = _median_ms(lambda: model.prompt_embeddings(ids, plan), repeats) - plain
    return out


def _concurrent_round(batcher: MicroBatcher, model: LanguageModel, level: int, new_tokens: int) -> dict[str, float]:
    """``level`` requests of ``new_tokens`` submitted at once: tokens, wall time, tokens/s, p50 latency."""
    lengths = [64 + (37 * i) % 192 for i in range(level)]
    prompts = [model.prompt_embeddings(_random_ids(n, 100 + i, 32000)) for i, n in enumerate(lengths)]
    counts = [0] * level
    latencies = [0.0] * level
    left = threading.Semaphore(0)
    started = time.perf_counter()

    def sink_for(row: int) -> Callable[[StepEvent | BaseException], None]:
        def sink(item: StepEvent | BaseException) -> None:
            if isinstance(item, StepEvent) and item.token_id is not None:
                counts[row] += 1
            if isinstance(item, BaseException) or item.finished:
                latencies[row] = time.perf_counter() - started
                left.release()

        return sink

    for row, embeds in enumerate(prompts):
        batcher.submit(embeds, SamplingParams(max_new_tokens=new_tokens), sink_for(row))
    for _ in range(level):
        left.acquire(timeout=600)
    wall = time.perf_counter() - started
    return {"tokens": sum(counts), "seconds": wall, "tokens_per_s": sum(counts) / wall,
            "p50_latency_s": statistics.median(latencies)}  # fmt: skip


def throughput_check(model: LanguageModel, levels: Sequence[int], new_tokens: int = 128) -> dict[str, Any]:
    """Completion tokens per second of the continuous batcher with ``level`` requests submitted at once."""
    batcher = MicroBatcher(model.open_batch, max_batch_size=max(levels), window_s=0.005, max_pending=4 * max(levels))
    batcher.start()
    try:
        _concurrent_round(batcher, model, 2, 16)  # warm-up
        results: dict[str, Any] = {"new_tokens": new_tokens}
        for level in levels:
            results[f"concurrent_{level}"] = _concurrent_round(batcher, model, level, new_tokens)
    finally:
        batcher.stop()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Run every check and print the JSON summary (``--out`` also writes it)."""
    parser = argparse.ArgumentParser(
        prog="python -m lethe.benchmarks.gpu_check", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--tiny", default="tiny-authors", help="the tiny model: built-in name or prepared folder")
    parser.add_argument("--repeats", type=int, default=15, help="timed pairs per overhead figure")
    parser.add_argument("--out", type=Path, help="also write the summary here")
    parser.add_argument("--cpu-smoke", action="store_true", help="run every step on the CPU, small shape, few repeats")
    args = parser.parse_args(argv)
    device, shape, levels = "cuda", LLAMA_1B, (1, 8, 32)
    if args.cpu_smoke:
        device, shape, levels, args.repeats = "cpu", SMOKE_SHAPE, (1, 2, 4), 2
    elif not torch.cuda.is_available():
        print(f"gpu_check: torch {torch.__version__} sees no CUDA device here; nothing was measured.", file=sys.stderr)
        return 2
    import transformers

    summary: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke run: figures mean nothing)",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    started = time.perf_counter()
    summary["noise"] = noise_check(device)
    summary["tiny"] = tiny_check(args.tiny, device)
    big = random_llama(args.tiny, shape, device)
    summary["model"] = {"shape": shape, "parameters": sum(p.numel() for p in big.model.parameters())}
    summary["overhead"] = overhead_check(big, args.repeats)
    summary["throughput"] = throughput_check(big, levels)
    summary["seconds"] = time.perf_counter() - started
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
