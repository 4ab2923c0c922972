"""The forget-set artifact: a folder of JSON and safetensors, never pickle.

Layout::

    manifest.json                      id, name, created, base model fingerprint, method, parameters, metrics
    classifier/                        the scope classifier (its own JSON + safetensors)
    soft_prompt/adapter_config.json    PEFT prompt-tuning config   (methods with a soft prompt)
    soft_prompt/adapter_model.safetensors   tensor ``prompt_embeddings`` (P, hidden)
    eco_clusters.safetensors           ``centroids`` (C, hidden), ``strengths`` (C,)  (optional)

Folders are written to a temporary sibling and renamed into place, so a reader never sees
a half-written artifact.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import torch
from pydantic import BaseModel, Field, StringConstraints, ValidationError
from safetensors.torch import load_file, save_file

from lethe.runtime.interventions import CorruptionFunction
from lethe.runtime.mentions import MentionIndex

if TYPE_CHECKING:
    from lethe.classifier import ScopeClassifier

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CLASSIFIER_DIR = "classifier"
SOFT_PROMPT_DIR = "soft_prompt"
ECO_CLUSTERS = "eco_clusters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PROMPT_TENSOR = "prompt_embeddings"
# A registered method's name: its stages joined by "+" (``training.methods`` holds the registry).
Method = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*(\+[a-z][a-z0-9_]*)*$", max_length=64)]
TokenMode = Literal["all", "salient"]
_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ArtifactError(ValueError):
    """The artifact is malformed, incomplete or unsafe."""


class FingerprintMismatchError(ArtifactError):
    """The artifact was trained for a different base model."""


class BaseModelInfo(BaseModel):
    """Which model an artifact was trained against."""

    name: str
    fingerprint: str


class EcoParameters(BaseModel):
    """The ECO corruption learned for a forget set.

    ``scope``: ``prompt`` corrupts the flagged prompt's selected tokens; ``sequence`` also corrupts every
    mention of the forget set's entities wherever it occurs (answer tokens when scoring, generated tokens
    before they are fed back). ``substitute`` always works on mentions, toward each entity's surrogate.
    """

    function: CorruptionFunction
    strength: float = Field(ge=0)
    dims: int = Field(default=1, ge=1)
    scope: Literal["prompt", "sequence"] = "prompt"
    fallback: float = Field(default=0.0, ge=0, description="substitute: noise for mentions without a surrogate")


class SpulParameters(BaseModel):
    """How the soft prompt was trained."""

    num_virtual_tokens: int = Field(ge=0)
    optimizer: str = "backprop"
    init: str = "random"


class ForgetSetParameters(BaseModel):
    """Everything the gateway needs to intervene, besides tensors and the classifier."""

    token_mode: TokenMode = "all"
    eco: EcoParameters | None = None
    spul: SpulParameters | None = None
    surrogates: dict[str, str] = Field(
        default_factory=dict, description="forget entity -> a same-kind entity the model knows (substitution)"
    )
    mentions: list[str] = Field(
        default_factory=list, description="besides the entities, words corrupted wherever they occur (answer values)"
    )
    extra: dict[str, Any] = Field(default_factory=dict)


class ForgetSetManifest(BaseModel):
    """``manifest.json``."""

    format_version: int = FORMAT_VERSION
    id: str
    name: str
    created: str
    base_model: BaseModelInfo
    method: Method
    parameters: ForgetSetParameters
    metrics: dict[str, Any] = Field(default_factory=dict)


def new_forget_set_id() -> str:
    """A fresh, URL- and path-safe forget-set id."""
    return "fs-" + uuid.uuid4().hex[:12]


def validate_id(value: str) -> str:
    """Return ``value`` if it is a safe id (no separators, no dots first), else raise ``ArtifactError``."""
    if not _ID_PATTERN.match(value):
        raise ArtifactError(f"invalid forget-set id {value!r}")
    return value


def utc_now() -> str:
    """Current UTC time in ISO 8601."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class ForgetSetArtifact:
    """In-memory forget set: manifest, optional soft prompt and cluster strengths, and the classifier."""

    def __init__(
        self,
        manifest: ForgetSetManifest,
        classifier: ScopeClassifier,
        soft_prompt: torch.Tensor | None = None,
        cluster_centroids: torch.Tensor | None = None,
        cluster_strengths: torch.Tensor | None = None,
    ):
        self.manifest = manifest
        self.classifier = classifier
        self.soft_prompt = soft_prompt
        self.cluster_centroids = cluster_centroids
        self.cluster_strengths = cluster_strengths
        self._placed: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}
        self._check()

    @property
    def id(self) -> str:
        """The forget-set id."""
        return self.manifest.id

    @property
    def entity_names(self) -> list[str]:
        """What an entity step looks for: the classifier's entities and the recorded answer values, longest first."""
        return mention_names(self.classifier, self.manifest.parameters.mentions)

    def mentions(self, fingerprint: str, encode: Callable[[str], list[int]]) -> MentionIndex:
        """How the entities (and their surrogates) are spelled in tokens of the model ``fingerprint`` (cached)."""
        surrogates = tuple(sorted(self.manifest.parameters.surrogates.items()))
        return _mention_index(fingerprint, encode, tuple(self.entity_names), surrogates)

    def placed(self, name: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
        """The soft prompt or the cluster centroids (``name``) on ``device`` in ``dtype``, copied there once."""
        tensor = {"soft_prompt": self.soft_prompt, "cluster_centroids": self.cluster_centroids}[name]
        if tensor is None:
            return None
        key = (name, device, dtype)
        placed = self._placed.get(key)
        if placed is None:
            placed = self._placed.setdefault(key, tensor.to(device=device, dtype=dtype))
        return placed

    def _check(self) -> None:
        validate_id(self.manifest.id)
        method = self.manifest.method
        params = self.manifest.parameters
        if "eco" in method.split("+") and params.eco is None:
            raise ArtifactError(f"method {method!r} needs ECO parameters")
        if "spul" in method.split("+") and self.soft_prompt is None:
            raise ArtifactError(f"method {method!r} needs a soft prompt")
        if self.soft_prompt is not None and self.soft_prompt.dim() != 2:
            raise ArtifactError("the soft prompt must be a (num_virtual_tokens, hidden) matrix")
        if (self.cluster_centroids is None) != (self.cluster_strengths is None):
            raise ArtifactError("cluster centroids and strengths come together")
        if self.cluster_centroids is not None and self.cluster_strengths is not None:
            if self.cluster_centroids.dim() != 2 or self.cluster_strengths.shape != (self.cluster_centroids.shape[0],):
                raise ArtifactError("cluster centroids (C, hidden) and strengths (C,) disagree")
            if bool((self.cluster_strengths < 0).any()) or not bool(torch.isfinite(self.cluster_strengths).all()):
                raise ArtifactError("cluster strengths must be finite and >= 0")

    def check_compatible(self, fingerprint: str, hidden_size: int | None = None) -> None:
        """Refuse to serve this artifact on a model other than the one it was trained for."""
        expected = self.manifest.base_model.fingerprint
        if expected != fingerprint:
            raise FingerprintMismatchError(
                f"forget set {self.id} was trained for base model {self.manifest.base_model.name!r} "
                f"({expected[:23]}...), not for the loaded model ({fingerprint[:23]}...)"
            )
        for name, tensor in (("soft prompt", self.soft_prompt), ("cluster centroids", self.cluster_centroids)):
            if tensor is not None and hidden_size is not None and tensor.shape[1] != hidden_size:
                raise FingerprintMismatchError(f"{name} width {tensor.shape[1]} != model hidden size {hidden_size}")

    def save(self, folder: Path) -> Path:
        """Write the artifact at ``folder`` atomically (replacing an existing one); returns ``folder``."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            self.classifier.save(staging / CLASSIFIER_DIR)
            if self.soft_prompt is not None:
                _write_peft_prompt(staging / SOFT_PROMPT_DIR, self.soft_prompt, self.manifest)
            if self.cluster_centroids is not None and self.cluster_strengths is not None:
                save_file(
                    {
                        "centroids": self.cluster_centroids.detach().float().cpu().contiguous(),
                        "strengths": self.cluster_strengths.detach().float().cpu().contiguous(),
                    },
                    str(staging / ECO_CLUSTERS),
                )
            (staging / MANIFEST).write_text(self.manifest.model_dump_json(indent=2))
            _swap_into_place(staging, folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return folder

    @classmethod
    def load(cls, folder: Path, fingerprint: str | None = None, hidden_size: int | None = None) -> ForgetSetArtifact:
        """Read and validate an artifact; with ``fingerprint``, refuse one trained for another model."""
        from lethe.classifier import ScopeClassifier

        folder = Path(folder)
        manifest = read_manifest(folder)
        try:
            classifier = ScopeClassifier.load(folder / CLASSIFIER_DIR)
        except (OSError, ValueError, KeyError) as exc:
            raise ArtifactError(f"forget set {manifest.id}: unreadable classifier ({exc})") from exc
        soft_prompt = None
        if (folder / SOFT_PROMPT_DIR).exists():
            soft_prompt = _read_peft_prompt(folder / SOFT_PROMPT_DIR)
        centroids = strengths = None
        if (folder / ECO_CLUSTERS).exists():
            tensors = _load_tensors(folder / ECO_CLUSTERS, {"centroids", "strengths"})
            centroids, strengths = tensors["centroids"], tensors["strengths"]
        artifact = cls(manifest, classifier, soft_prompt, centroids, strengths)
        if fingerprint is not None:
            artifact.check_compatible(fingerprint, hidden_size)
        return artifact


def mention_names(classifier: ScopeClassifier, mentions: Sequence[str]) -> list[str]:
    """The classifier's entities and the extra ``mentions``, longest first: what an entity step looks for."""
    names = {e.surface for e in classifier.entities} | set(mentions)
    return sorted(names, key=lambda n: (-len(n), n))


@lru_cache(maxsize=64)
def _mention_index(
    fingerprint: str,
    encode: Callable[[str], list[int]],
    names: tuple[str, ...],
    surrogates: tuple[tuple[str, str], ...],
) -> MentionIndex:
    return MentionIndex.from_surfaces(encode, names, dict(surrogates))


def read_manifest(folder: Path) -> ForgetSetManifest:
    """Parse and validate ``manifest.json``."""
    path = Path(folder) / MANIFEST
    try:
        manifest = ForgetSetManifest.model_validate_json(path.read_text())
    except FileNotFoundError as exc:
        raise ArtifactError(f"{folder} has no {MANIFEST}") from exc
    except (ValidationError, ValueError) as exc:
        raise ArtifactError(f"{path} is not a valid forget-set manifest: {exc}") from exc
    if manifest.format_version != FORMAT_VERSION:
        raise ArtifactError(f"unsupported artifact format version {manifest.format_version}")
    validate_id(manifest.id)
    return manifest


def _load_tensors(path: Path, expected: set[str]) -> dict[str, torch.Tensor]:
    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise ArtifactError(f"{path.name} is not a readable safetensors file") from exc
    if set(tensors) != expected:
        raise ArtifactError(f"{path.name} holds {sorted(tensors)}, expected {sorted(expected)}")
    for name, tensor in tensors.items():
        if not tensor.is_floating_point() or not bool(torch.isfinite(tensor).all()):
            raise ArtifactError(f"{path.name}:{name} must be finite floating point")
    return {name: tensor.float() for name, tensor in tensors.items()}


def _write_peft_prompt(folder: Path, embeddings: torch.Tensor, manifest: ForgetSetManifest) -> None:
    folder.mkdir(parents=True)
    spul = manifest.parameters.spul
    config = {
        "peft_type": "PROMPT_TUNING",
        "task_type": "CAUSAL_LM",
        "num_virtual_tokens": int(embeddings.shape[0]),
        "token_dim": int(embeddings.shape[1]),
        "num_transformer_submodules": 1,
        "prompt_tuning_init": "TEXT" if spul is not None and spul.init == "text" else "RANDOM",
        "base_model_name_or_path": manifest.base_model.name,
        "inference_mode": True,
        "revision": None,
    }
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
    save_file({PROMPT_TENSOR: embeddings.detach().float().cpu().contiguous()}, str(folder / ADAPTER_WEIGHTS))


def _read_peft_prompt(folder: Path) -> torch.Tensor:
    try:
        config = json.loads((folder / ADAPTER_CONFIG).read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"unreadable {ADAPTER_CONFIG}: {exc}") from exc
    if config.get("peft_type") != "PROMPT_TUNING":
        raise ArtifactError("the soft prompt must be a PEFT PROMPT_TUNING adapter")
    embeddings = _load_tensors(folder / ADAPTER_WEIGHTS, {PROMPT_TENSOR})[PROMPT_TENSOR]
    if embeddings.dim() != 2 or list(embeddings.shape) != [config.get("num_virtual_tokens"), config.get("token_dim")]:
        raise ArtifactError("prompt_embeddings shape disagrees with adapter_config.json")
    return embeddings


def _swap_into_place(staging: Path, folder: Path) -> None:
    """Rename ``staging`` to ``folder``; an existing folder is moved aside first and removed after."""
    if not folder.exists():
        os.replace(staging, folder)
        return
    retired = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(folder, retired)
    os.replace(staging, folder)
    shutil.rmtree(retired, ignore_errors=True)
