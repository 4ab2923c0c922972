"""The gateway's settings (host, keys, limits, proxy mode) and the rule for binding without keys."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field

from lethe.runtime.settings import RuntimeSettings
from lethe.service.registry_settings import RegistrySettings


class GatewaySettings(RuntimeSettings, RegistrySettings):
    """Everything ``lethe serve`` is configured by: the runtime's settings plus serving, keys and proxy mode.

    Every field can be set from the environment with the ``LETHE_`` prefix
    (``LETHE_API_KEYS``, ``LETHE_UPSTREAM``...) and overridden by CLI flags.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str = Field(
        default="", description="Comma-separated names clients may use for the model (default: its own name)."
    )
    api_keys: str = Field(default="", description="Comma-separated bearer keys for /v1 routes.")
    admin_key: str = Field(default="", description="Bearer key for /admin routes.")
    audit_key: str = Field(
        default="", description="Key of the audit log's prompt HMACs (default: <registry>/audit.key, made once)."
    )
    report_key: str = Field(
        default="", description="Key of the verification reports' HMACs (default: <registry>/report.key, made once)."
    )

    max_body_bytes: int = 8 * 1024 * 1024
    body_timeout_s: float = Field(default=60.0, gt=0, description="Longest time a client may take to send a body.")
    uploads_per_client: int = Field(default=2, ge=1, description="Artifact uploads one client address may run at once.")
    max_prompt_tokens: int = 2048
    max_new_tokens: int = 512
    max_concurrency: int = 4
    max_batch_size: int = 8
    batch_window_ms: float = 5.0
    max_queue_depth: int = Field(default=64, description="Generations waiting for a batch before a 503.")
    decode_workers: int = Field(default=2, ge=1, description="Batches the gateway decodes at the same time.")
    allow_prompt_embeds: bool = Field(default=True, description="Accept vLLM-style prompt_embeds on /v1/completions.")
    prompt_embeds_any_rows: bool = Field(
        default=False,
        description="Also accept prompt_embeds rows that stand for no single token (classified by their nearest "
        "tokens): for a server that stands in for vLLM behind a Lethe proxy, which sends corrupted rows.",
    )

    upstream: str | None = Field(default=None, description="Proxy mode: base URL of the upstream model server.")
    upstream_model: str | None = Field(default=None, description="Proxy mode: the upstream's model name.")
    upstream_timeout_s: float = Field(default=60.0, gt=0, description="Longest wait for upstream bytes.")
    upstream_connect_timeout_s: float = Field(default=5.0, gt=0, description="Longest wait for a connection.")
    upstream_connect_retries: int = Field(default=2, ge=0, description="Retries of refused/failed connects only.")
    upstream_max_connections: int = Field(default=100, ge=1, description="Pooled connections to the upstream.")
    upstream_api_key: str = Field(default="", description="Bearer key the proxy sends upstream.")
    upstream_prompt_embeds: Literal["auto", "yes", "no"] = Field(
        default="auto", description="Whether the upstream takes prompt_embeds (auto: probed at start)."
    )
    no_embeds_policy: Literal["refuse", "text", "block"] = Field(
        default="refuse", description="Flagged requests when the upstream takes no prompt_embeds."
    )
    refusal_message: str = "I'm sorry, but I can't help with that request."
    upstream_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto", description="dtype of prompt_embeds sent upstream (auto: the model config's; bf16 for float32)."
    )
    embeddings_from: str | None = Field(
        default=None, description="Proxy mode: model whose tokenizer and embedding matrix to load (default: model)."
    )
    max_import_bytes: int = Field(default=64 * 1024 * 1024, ge=1, description="Largest artifact archive upload.")
    max_import_unpacked_bytes: int = Field(default=256 * 1024 * 1024, ge=1, description="Largest unpacked archive.")

    @property
    def served_model_names(self) -> list[str]:
        """The names of ``--served-model-name``, in order (the first is the model's id), without empties."""
        return [n.strip() for n in self.served_model_name.split(",") if n.strip()]

    @property
    def api_key_list(self) -> list[str]:
        """The configured inference keys, stripped, without empties."""
        return [k.strip() for k in self.api_keys.split(",") if k.strip()]


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_binding(settings: GatewaySettings) -> list[str]:
    """Refuse to expose an unauthenticated server; return warnings to print."""
    warnings = []
    if not settings.api_key_list:
        if not is_loopback(settings.host):
            raise ValueError(
                f"refusing to listen on {settings.host} without API keys: set LETHE_API_KEYS (or --api-keys), "
                "or bind a loopback address such as 127.0.0.1"
            )
        warnings.append(f"no API keys configured: serving WITHOUT authentication, on loopback ({settings.host}) only")
        if not settings.admin_key:
            warnings.append("no admin key configured: the admin API is open to local callers")
    elif not settings.admin_key:
        warnings.append("no admin key configured (LETHE_ADMIN_KEY): the admin API and /metrics are disabled")
    return warnings
