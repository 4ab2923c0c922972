"""Tiny Llama models trained from scratch on the fictitious-authors world.

Two variants share the seed, the tokenizer and every hyper-parameter:
- ``full`` learns the forget, retain and general rows;
- ``retain`` learns the retain and general rows only: the exact "never learned" reference
  that forget quality compares against.
Neither sees the held-out people.

Each training sample is one ChatML exchange; the loss covers the assistant answer and its
``<|im_end|>`` only. Every fact is asked with its main prompt and each paraphrased prompt
(answer: ``completion``) and with its ``describe_prompt`` (answer: ``paraphrased_completion``),
so the model reproduces ``completion`` under greedy decoding and also knows the paraphrase
the truth ratio scores.

Builds are cached under ``cache_dir/<size>-<key>/`` (``data``, ``full``, ``retain``), where the key
hashes the world config and the training config; each folder is written under a temporary
name and renamed into place when complete, and a file lock keeps concurrent builders apart.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from lethe.benchmarks.authors_world import SPLITS, WorldConfig, build_world, read_rows, write_world
from lethe.runtime.loading import ModelPreparer, build_lock
from lethe.runtime.settings import RuntimeSettings

Size = Literal["test", "bench"]
Variant = Literal["full", "retain"]
VARIANTS: tuple[Variant, ...] = ("full", "retain")
TRAINER_VERSION = 1

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>")
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
    "'\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
VARIANT_SPLITS: dict[Variant, tuple[str, ...]] = {
    "full": ("forget", "retain", "general"),
    "retain": ("retain", "general"),
}


class TinyTrainConfig(BaseModel):
    """Tokenizer, architecture and optimization settings of a tiny Llama (both variants share them)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    vocab_size: int = Field(description="BPE vocabulary, special tokens included")
    hidden_size: int
    intermediate_size: int = Field(description="MLP width")
    num_layers: int
    num_heads: int = Field(description="attention heads (as many key/value heads)")
    epochs: int
    batch_size: int
    lr: float = Field(description="peak AdamW learning rate")
    warmup_steps: int = Field(default=20, description="linear warm-up before the cosine decay")
    min_lr_ratio: float = Field(default=0.05, description="the cosine decays to this share of ``lr``")
    weight_decay: float = 0.0
    max_positions: int = Field(default=256, description="longest sequence the model takes")
    seed: int = Field(default=0, description="initial weights and batch order")
    threads: int = Field(default=2, description="torch threads per variant build")


# Both sizes train both variants at once, one thread each (test: about 75 s of CPU per variant).
_SIZES: dict[Size, tuple[Callable[[], WorldConfig], TinyTrainConfig]] = {
    "test": (
        WorldConfig.test,
        TinyTrainConfig(vocab_size=1024, hidden_size=128, intermediate_size=384, num_layers=2, num_heads=4,
                        epochs=12, batch_size=32, lr=3e-3, threads=1),
    ),
    "bench": (
        WorldConfig.bench,
        TinyTrainConfig(vocab_size=1536, hidden_size=192, intermediate_size=512, num_layers=3, num_heads=4,
                        epochs=40, batch_size=32, lr=2e-3, threads=1),
    ),
}  # fmt: skip


def configs(size: Size) -> tuple[WorldConfig, TinyTrainConfig]:
    """World and training configs of a named size."""
    if size not in _SIZES:
        raise ValueError(f"unknown size {size!r} (expected 'test' or 'bench')")
    world, train = _SIZES[size]
    return world(), train


def build_key(size: Size) -> str:
    """Cache key of a size: hash of the world config, the training config and the trainer version."""
    world, train = configs(size)
    payload = {"world": world.key(), "train": train.model_dump(), "version": TRAINER_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]


# ---------------------------------------------------------------- caching


def _publish(tmp: Path, final: Path) -> None:
    """Move a completed temporary folder into place (same parent, atomic rename)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def _clean_stale(root: Path) -> None:
    """Remove leftovers of interrupted builds (only called while holding the lock)."""
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _root(cache_dir: Path, size: Size) -> Path:
    return Path(cache_dir).expanduser() / f"{size}-{build_key(size)}"


def _ensure_world(root: Path, size: Size) -> Path:
    """Write the world's data folder under ``root`` if missing (caller holds the lock)."""
    data = root / "data"
    if (data / "world.json").is_file():
        return data
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-data-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    write_world(build_world(configs(size)[0]), tmp)
    _publish(tmp, data)
    return data


def prepare_world(cache_dir: Path, size: Size = "test") -> Path:
    """Write (once) the world's JSONL files and return the data folder ``cache_dir/<size>-<key>/data``."""
    root = _root(cache_dir, size)
    if (root / "data" / "world.json").is_file():
        return root / "data"
    with build_lock(root):
        return _ensure_world(root, size)


def prepare_tiny_authors(
    cache_dir: Path, size: Size = "test", variant: Variant = "full", progress: bool = False
) -> Path:
    """Return the Hugging Face folder of a tiny-authors model, building both variants if missing."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} (expected 'full' or 'retain')")
    root = _root(cache_dir, size)
    if _is_built(root / variant):
        return root / variant
    with build_lock(root):
        if not _is_built(root / variant):
            _clean_stale(root)
            data = _ensure_world(root, size)
            _build_all(root, data, configs(size)[1], progress)
    return root / variant


def _registered(size: Size, variant: Variant) -> ModelPreparer:
    def prepare(settings: RuntimeSettings, progress: bool) -> Path:
        return prepare_tiny_authors(settings.worlds_dir, size, variant, progress=progress)

    return prepare


# The ``lethe.models`` entry point (pyproject.toml): built-in names for ``--model``.
BUILTIN_MODELS: dict[str, ModelPreparer] = {
    "tiny-authors": _registered("test", "full"),
    "tiny-authors-retain": _registered("test", "retain"),
    "tiny-authors-bench": _registered("bench", "full"),
    "tiny-authors-bench-retain": _registered("bench", "retain"),
}


def _is_built(folder: Path) -> bool:
    return (folder / "build.json").is_file()


def _build_all(root: Path, data: Path, config: TinyTrainConfig, progress: bool) -> None:
    """Train the tokenizer and the missing variants, each published only when complete.

    With two or more CPUs the variants train at the same time in two processes of
    ``config.threads`` threads each; either way the weights are the same (same threads, same seed).
    """
    started = time.perf_counter()
    tokenizer = train_tokenizer(world_texts(data), config.vocab_size)
    tokenizer_seconds = time.perf_counter() - started
    missing = [v for v in VARIANTS if not _is_built(root / v)]
    tmps = {v: root / f".tmp-{v}-{os.getpid()}" for v in missing}
    for tmp in tmps.values():
        shutil.rmtree(tmp, ignore_errors=True)
    if len(missing) > 1 and (os.cpu_count() or 1) >= 2 * config.threads:
        tokenizer_dir = root / f".tmp-tokenizer-{os.getpid()}"
        tokenizer.save_pretrained(tokenizer_dir)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=len(missing), mp_context=context) as pool:
            futures = [
                pool.submit(_build_in_process, data, tokenizer_dir, v, config, tmps[v], tokenizer_seconds)
                for v in missing
            ]
            for future in futures:
                future.result()
        shutil.rmtree(tokenizer_dir, ignore_errors=True)
    else:
        for variant in missing:
            build_variant(data, tokenizer, variant, config, tmps[variant], progress, tokenizer_seconds)
    for variant in missing:
        _publish(tmps[variant], root / variant)


def _build_in_process(
    data: Path, tokenizer_dir: Path, variant: Variant, config: TinyTrainConfig, folder: Path, tokenizer_seconds: float
) -> None:
    from transformers import PreTrainedTokenizerFast

    torch.set_num_threads(config.threads)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    build_variant(data, tokenizer, variant, config, folder, tokenizer_seconds=tokenizer_seconds)


# ---------------------------------------------------------------- tokenizer


def world_texts(data: Path) -> list[str]:
    """Every string of the world (all splits), plus the chat markup, for tokenizer training."""
    texts: list[str] = []
    for split in SPLITS:
        for row in read_rows(data, split):
            texts += [row["prompt"], row["completion"], row["paraphrased_completion"], row["describe_prompt"]]
            texts += row["paraphrased_prompts"] + row["perturbed_completions"]
    # The role names appear once per sample, so they become single tokens.
    return texts + ["user\n", "assistant\n", "system\n"] * len(texts)


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> object:
    """A byte-level BPE trained on ``texts``, wrapped as a ChatML ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token="<|endoftext|>",
        additional_special_tokens=["<|endoftext|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = 256
    return tokenizer


def chat_text(question: str, answer: str | None = None) -> str:
    """The ChatML rendering of one user question (and the assistant answer, when given)."""
    prompt = f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    return prompt if answer is None else f"{prompt}{answer}<|im_end|>\n"


# ---------------------------------------------------------------- data


def training_pairs(rows: Sequence[dict]) -> list[tuple[str, str]]:
    """(question, answer) pairs taught for each row: every prompt phrasing, plus the paraphrase."""
    pairs: list[tuple[str, str]] = []
    for row in rows:
        pairs += [(question, row["completion"]) for question in [row["prompt"], *row["paraphrased_prompts"]]]
        pairs.append((row["describe_prompt"], row["paraphrased_completion"]))
    return pairs


def encode_pairs(tokenizer: object, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """Token ids and labels (``-100`` outside the answer and its ``<|im_end|>``) of each pair."""
    encoded = []
    for question, answer in pairs:
        prompt_ids = tokenizer(chat_text(question), add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(f"{answer}<|im_end|>", add_special_tokens=False)["input_ids"]
        ids = prompt_ids + answer_ids
        labels = [-100] * len(prompt_ids) + answer_ids
        encoded.append((ids, labels))
    return encoded


def _batches(
    samples: Sequence[tuple[list[int], list[int]]], batch_size: int, pad_id: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Shuffled, right-padded batches: (input_ids, attention_mask, labels)."""
    order = torch.randperm(len(samples), generator=generator).tolist()
    for start in range(0, len(order), batch_size):
        chunk = [samples[i] for i in order[start : start + batch_size]]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        for row, (sample_ids, sample_labels) in enumerate(chunk):
            ids[row, : len(sample_ids)] = torch.tensor(sample_ids)
            mask[row, : len(sample_ids)] = 1
            labels[row, : len(sample_labels)] = torch.tensor(sample_labels)
        yield ids, mask, labels


# ---------------------------------------------------------------- model and training


def new_model(config: TinyTrainConfig, tokenizer: object) -> torch.nn.Module:
    """A freshly initialized tiny ``LlamaForCausalLM`` (seeded) for ``tokenizer``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    special = {name: tokenizer.convert_tokens_to_ids(token) for name, token in _special_names().items()}
    model_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        max_position_embeddings=config.max_positions,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        **special,
    )
    torch.manual_seed(config.seed)
    model = LlamaForCausalLM(model_config)
    model.generation_config.bos_token_id = special["bos_token_id"]
    model.generation_config.eos_token_id = special["eos_token_id"]
    model.generation_config.pad_token_id = special["pad_token_id"]
    return model


def _special_names() -> dict[str, str]:
    return {"bos_token_id": "<|im_start|>", "eos_token_id": "<|im_end|>", "pad_token_id": "<pad>"}


def _lr_factor(step: int, total: int, config: TinyTrainConfig) -> float:
    """Linear warm-up then cosine decay to ``min_lr_ratio``."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_model(
    model: torch.nn.Module,
    samples: Sequence[tuple[list[int], list[int]]],
    config: TinyTrainConfig,
    pad_id: int,
    progress: bool = False,
) -> dict[str, float]:
    """Train ``model`` in place on ``samples``; returns the final loss and step count."""
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.98), weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(samples) / config.batch_size)
    total = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, total, config))
    bar = _progress_bar(total, progress)
    model.train()
    last_losses: list[float] = []
    for _epoch in range(config.epochs):
        for ids, mask, labels in _batches(samples, config.batch_size, pad_id, generator):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            last_losses = [*last_losses[-steps_per_epoch + 1 :], loss.item()]
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss):.3f}")
    if bar is not None:
        bar.close()
    model.eval()
    return {"final_loss": sum(last_losses) / max(1, len(last_losses)), "steps": float(total)}


def _progress_bar(total: int, enabled: bool) -> object | None:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="training tiny llama", unit="step")


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    """Cap torch's CPU threads for the block, restoring the previous count after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, min(count, previous, os.cpu_count() or 1)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def build_variant(
    data: Path,
    tokenizer: object,
    variant: Variant,
    config: TinyTrainConfig,
    folder: Path,
    progress: bool = False,
    tokenizer_seconds: float = 0.0,
) -> dict:
    """Train one variant and save it (model, tokenizer, ``build.json``) into ``folder``; returns the build info."""
    started, cpu_started = time.perf_counter(), time.process_time()
    with _threads(config.threads):
        rows = [row for split in VARIANT_SPLITS[variant] for row in read_rows(data, split)]
        samples = encode_pairs(tokenizer, training_pairs(rows))
        model = new_model(config, tokenizer)
        metrics = train_model(model, samples, config, tokenizer.pad_token_id, progress=progress)
        train_seconds = time.perf_counter() - started
        exact = {split: exact_match(model, tokenizer, read_rows(data, split)) for split in SPLITS}
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    info = {
        "variant": variant,
        "trained_splits": list(VARIANT_SPLITS[variant]),
        "world": json.loads((data / "world.json").read_text(encoding="utf-8")),
        "train_config": config.model_dump(),
        "trainer_version": TRAINER_VERSION,
        "samples": len(samples),
        "parameters": sum(p.numel() for p in model.parameters()),
        "final_loss": metrics["final_loss"],
        "steps": int(metrics["steps"]),
        "exact_match": exact,
        "tokenizer_seconds": round(tokenizer_seconds, 2),
        "train_seconds": round(train_seconds, 2),
        "wall_seconds": round(time.perf_counter() - started, 2),
        "cpu_seconds": round(time.process_time() - cpu_started, 2),
    }
    (folder / "build.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def greedy_answers(
    model: torch.nn.Module, tokenizer: object, questions: Sequence[str], max_new_tokens: int = 48, batch_size: int = 64
) -> list[str]:
    """Greedy answers (special tokens dropped, stripped) to single-turn chat questions."""
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    answers: list[str] = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(questions), batch_size):
            texts = [
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
                )
                for q in questions[start : start + batch_size]
            ]
            batch = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
            output = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=tokenizer.pad_token_id,
            )
            new_tokens = output[:, batch["input_ids"].shape[1] :]
            answers += [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
    return answers


def exact_match(model: torch.nn.Module, tokenizer: object, rows: Sequence[dict]) -> float:
    """Fraction of rows whose greedy answer to ``prompt`` equals ``completion`` exactly."""
    if not rows:
        return 0.0
    answers = greedy_answers(model, tokenizer, [row["prompt"] for row in rows])
    return sum(answer == row["completion"].strip() for answer, row in zip(answers, rows, strict=True)) / len(rows)


def greedy_exact_match(model_dir: Path, rows: list[dict]) -> float:
    """Greedy exact match of the saved model in ``model_dir`` on ``rows`` (main prompt, chat template)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with _threads(2):
        return exact_match(model, tokenizer, rows)
