"""``lethe train``: train a forget set from JSONL files and write its artifact."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lethe.runtime.settings import RuntimeSettings
from lethe.training.data import TrainingDataError, load_rows
from lethe.training.methods import DEFAULT_METHOD, METHOD_NAMES

TICKS = 1000


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``lethe train``."""
    train = commands.add_parser(
        "train",
        help=f"train a forget set (scope classifier + one of: {', '.join(METHOD_NAMES)}) and write its artifact",
    )
    train.add_argument("--model", default=None, help="built-in name, HF folder or .gguf file (LETHE_MODEL)")
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--forget", type=Path, help='JSONL of {"prompt", "completion"} rows to forget')
    source.add_argument("--topic", help="forget a topic: the model reveals what it knows about it (Reveal)")
    source.add_argument(
        "--demo", action="store_true", help="rebuild the Harry Potter demo forget set (its topic, seeds and options)"
    )
    train.add_argument(
        "--seed-prompt", action="append", default=[], help="with --topic: a question about the topic (repeatable)"
    )
    train.add_argument(
        "--entity", action="append", default=[], help="with --topic: a name that belongs to the topic (repeatable)"
    )
    train.add_argument(
        "--keep-topic", action="append", default=[],
        help="with --topic: an adjacent topic that must stay answerable (repeatable)",
    )  # fmt: skip
    train.add_argument("--retain", type=Path, default=None, help="JSONL of rows whose answers must not change")
    train.add_argument("--method", choices=METHOD_NAMES, default=DEFAULT_METHOD)
    train.add_argument("--out", required=True, type=Path, help="artifact folder to write (must not exist)")
    train.add_argument("--name", default=None, help="forget-set name (default: the forget file's stem or the topic)")
    train.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    train.add_argument("--id", dest="forget_set_id", default=None, help="forget-set id (default: a fresh one)")
    train.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE",
        help="training option, e.g. eco.rounds=2 or spul.optimizer=zo (value parsed as JSON when it can be)",
    )  # fmt: skip
    train.add_argument("--options", default=None, help="training options as a JSON object")
    train.add_argument("--overwrite", action="store_true", help="replace an existing artifact at --out")
    train.set_defaults(handler=_train)


def parse_options(pairs: list[str], blob: str | None) -> dict[str, Any]:
    """Merge ``--options`` JSON and ``--option key=value`` pairs (pairs win)."""
    options: dict[str, Any] = {}
    if blob:
        try:
            loaded = json.loads(blob)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--options is not valid JSON: {exc.msg}") from None
        if not isinstance(loaded, dict):
            raise ValueError("--options must be a JSON object")
        options.update(loaded)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--option expects KEY=VALUE, got {pair!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        options[key.strip()] = value
    return options


def _train(args: argparse.Namespace) -> int:
    from lethe.runtime.model import LanguageModel
    from lethe.training.trainer import TrainConfig, train_forget_set, train_topic

    if args.demo:
        given = args.forget_set_id or args.option or args.options or args.seed is not None
        if given or args.retain or args.seed_prompt or args.entity or args.keep_topic:
            raise TrainingDataError("--demo takes only --model, --out and --overwrite: its settings are fixed")
    else:
        options = parse_options(args.option, args.options)
        if args.seed is not None:
            options["seed"] = args.seed
        config = TrainConfig.from_options(args.method, options)
    if (args.seed_prompt or args.entity or args.keep_topic) and args.topic is None:
        raise TrainingDataError("--seed-prompt, --entity and --keep-topic go with --topic")
    if args.topic is not None and not args.topic.strip():
        raise TrainingDataError("--topic must not be blank")
    forget = load_rows(args.forget) if args.forget is not None else None
    retain = load_rows(args.retain, required=False) if args.retain is not None else None
    if args.out.exists() and not args.overwrite:
        raise TrainingDataError(f"{args.out} already exists (use --overwrite to replace it)")
    settings = RuntimeSettings.from_args(args, model=args.model)
    model = LanguageModel.load(settings.model, settings, progress=True)
    record: dict[str, list[str]] = {}
    if args.demo:
        from lethe.training.demo import build_demo_forget_set

        artifact = build_demo_forget_set(model, _progress_bar(), record)
    elif forget is None:
        artifact = train_topic(
            model, args.name or args.topic, args.topic, args.seed_prompt, config,
            progress=_progress_bar(), forget_set_id=args.forget_set_id, entities=args.entity,
            keep_topics=args.keep_topic,
        )  # fmt: skip
    else:
        name = args.name or args.forget.stem
        artifact = train_forget_set(
            model, name, forget, retain, config, progress=_progress_bar(), forget_set_id=args.forget_set_id
        )
    artifact.save(args.out)
    if args.demo:
        from lethe.training.demo import save_build_inputs

        save_build_inputs(args.out, record)
    print(json.dumps(_summary(artifact.manifest.metrics, artifact.id, args.out), indent=2))
    return 0


def _progress_bar() -> Any:
    from tqdm import tqdm

    bar = tqdm(total=TICKS, desc="training", unit="‰", file=sys.stderr, leave=True)
    state = {"ticks": 0}

    def update(fraction: float, message: str) -> None:
        ticks = min(TICKS, round(fraction * TICKS))
        if ticks > state["ticks"]:
            bar.update(ticks - state["ticks"])
            state["ticks"] = ticks
        bar.set_description(message, refresh=False)
        if ticks >= TICKS:
            bar.close()

    return update


def _summary(metrics: dict[str, Any], forget_set_id: str, folder: Path) -> dict[str, Any]:
    summary: dict[str, Any] = {"id": forget_set_id, "folder": str(folder)}
    for moment in ("before", "after"):
        for split, figures in metrics.get(moment, {}).items():
            for key in ("answer_probability", "truth_ratio"):
                summary[f"{moment}.{split}.{key}"] = figures.get(key)
    for key in ("flag_rate", "wall_time_s", "forward_passes"):
        if key in metrics:
            summary[key] = metrics[key]
    return summary
