"""The service's settings: one typed object, read from ``SPATIAL_DROPOUT_*`` variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.core.config import DataFormat


class Settings(BaseSettings):
    """Every knob of the service; the README's settings table is checked against these fields."""

    model_config = SettingsConfigDict(env_prefix="SPATIAL_DROPOUT_", extra="ignore", frozen=True)

    database_url: str = "sqlite:///./data/spatial_dropout.sqlite3"
    """Where layers are stored: ``sqlite:///relative/path``, ``sqlite:////absolute/path``."""

    data_format: DataFormat = DataFormat.CHANNELS_LAST
    """Default ``data_format`` for layers created without one (keras.json's image_data_format)."""

    max_body_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    """Largest request body accepted; larger ones get 413 before they are read."""

    max_tensor_elements: int = Field(default=64 * 1024 * 1024, ge=1)
    """Largest number of elements in one posted tensor."""

    max_model_nodes: int = Field(default=100_000, ge=1)
    """Most nodes (subgraphs, functions included) in a model to compose, counted before parsing."""

    max_model_bytes: int = Field(default=512 * 1024 * 1024, ge=1024)
    """Largest model ``PUT /models/{name}`` takes; larger gets 413 before it is read."""

    model_repository: str = ""
    """Read-only directory of models served by name: ``NAME.onnx`` or ``NAME/model.onnx``."""

    max_mc_samples: int = Field(default=256, ge=1)
    """Most Monte Carlo samples (``mc_samples``) one V2 infer call may ask for."""

    model_cache_bytes: int = Field(default=2 * 1024 * 1024 * 1024, ge=1)
    """Most serialized model bytes whose onnxruntime sessions a process keeps (least recent out)."""

    model_threads: int = Field(default=2, ge=1)
    """onnxruntime intra-op threads of each model's session."""

    body_timeout_seconds: float = Field(default=30.0, gt=0)
    """Longest pause allowed while a request body arrives; a stalled body gets 408."""

    max_pending_body_bytes: int = Field(default=1024 * 1024 * 1024, ge=1024)
    """Most bytes all unfinished request bodies of a process may hold; past it, 503."""

    max_head_bytes: int = Field(default=64 * 1024, ge=1024)
    """Largest request line plus headers; a larger head gets 431 and the connection closes."""

    head_timeout_seconds: float = Field(default=10.0, gt=0)
    """Longest wait for a whole request head (capped by BODY_TIMEOUT_SECONDS); then 408."""

    layer_cache_seconds: float = Field(default=1.0, ge=0)
    """How long a process reuses a layer it read (0: never); deletes elsewhere show after it."""

    host: str = "127.0.0.1"
    """Interface ``spatial-dropout serve`` binds to (``--host`` overrides it)."""

    port: int = Field(default=8000, ge=0, le=65535)
    """Port ``spatial-dropout serve`` listens on (``--port`` overrides it)."""

    grpc_port: int = Field(default=8001, ge=0, le=65535)
    """Port of the Open Inference Protocol over gRPC, on HOST (``--grpc-port``; 0: no gRPC)."""

    workers: int = Field(default=1, ge=1)
    """Worker processes of ``spatial-dropout serve`` (``--workers`` overrides it)."""

    log_level: str = "info"
    """uvicorn's log level: critical, error, warning, info, debug or trace."""

    log_format: Literal["json", "text"] = "json"
    """``json``: one JSON object per line (time, level, message, request_id, ...); ``text``."""

    graceful_shutdown_seconds: int = Field(default=30, ge=1)
    """On SIGTERM, how long in-flight requests may still run before they are cancelled."""

    drain_seconds: float = Field(default=0.0, ge=0, le=3600)
    """After SIGTERM, how long /readyz says 503 while every request is still served (0: none)."""

    database_pool_size: int = Field(default=10, ge=1)
    """Most PostgreSQL connections one worker process keeps open (SQLite ignores it)."""

    database_timeout_seconds: float = Field(default=2.0, gt=0, le=3600)
    """Longest a request waits on PostgreSQL before a 503 store_unavailable (statement_timeout)."""

    api_tokens: SecretStr = SecretStr("")
    """Bearer tokens, comma-separated; when set, writes need ``Authorization: Bearer <token>``."""

    auth_reads: bool = False
    """With ``API_TOKENS`` set, reads (GET) need a token too; probes and /metrics stay open."""

    def tokens(self) -> tuple[str, ...]:
        """The configured bearer tokens, blanks dropped; empty when auth is off."""
        raw = self.api_tokens.get_secret_value()
        return tuple(token.strip() for token in raw.split(",") if token.strip())
