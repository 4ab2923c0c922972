"""``lethe models prepare`` and ``lethe generate``."""

from __future__ import annotations

import argparse
import sys

from lethe.runtime.generation import SamplingParams
from lethe.runtime.loading import builtin_model_names, prepare_model
from lethe.runtime.settings import RuntimeSettings


def register(commands: argparse._SubParsersAction) -> None:
    """Add the runtime's sub-commands."""
    models = commands.add_parser("models", help="prepare built-in models")
    models_commands = models.add_subparsers(dest="models_command", required=True)
    prepare = models_commands.add_parser("prepare", help="prepare a model and print its folder")
    prepare.add_argument("name", help=f"built-in name ({', '.join(builtin_model_names())}), HF folder or .gguf file")
    prepare.set_defaults(handler=_prepare)

    generate = commands.add_parser("generate", help="generate from a model (chat-templated when it has a template)")
    generate.add_argument("prompt")
    generate.add_argument("--model", default=None, help="built-in name, HF folder or .gguf file (LETHE_MODEL)")
    generate.add_argument("--max-tokens", type=int, default=128)
    generate.add_argument("--temperature", type=float, default=0.0)
    generate.add_argument("--top-p", type=float, default=1.0)
    generate.add_argument("--seed", type=int, default=None)
    generate.add_argument("--stop", action="append", default=[])
    generate.add_argument("--forget-set", action="append", default=[], help="artifact folder to apply (repeatable)")
    generate.set_defaults(handler=_generate)


def _prepare(args: argparse.Namespace) -> int:

    print(prepare_model(args.name, RuntimeSettings.from_args(args), progress=True))
    return 0


def _generate(args: argparse.Namespace) -> int:
    from lethe.runtime.model import LanguageModel
    from lethe.runtime.screening import ForgetSetScreen

    settings = RuntimeSettings.from_args(args, model=args.model)
    model = LanguageModel.load(settings.model, settings)
    screen = ForgetSetScreen.from_folders(args.forget_set, model.embedder)
    messages = [{"role": "user", "content": args.prompt}]
    prompt = model.chat_prompt(messages) if model.embedder.has_chat_template else model.text_prompt(args.prompt)
    params = SamplingParams(
        max_new_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        stop=tuple(args.stop),
    )
    verdict = screen.screen(prompt, messages, request_seed=args.seed or 0, embedder=model.embedder)
    for delta in model.stream(prompt, params, verdict.plan):
        sys.stdout.write(delta)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
