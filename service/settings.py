"""The service's settings: one typed object, read from ``SPATIAL_DROPOUT_*`` variables."""

from __future__ import annotations

from pydantic import Field
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

    host: str = "127.0.0.1"
    """Interface ``spatial-dropout serve`` binds to (``--host`` overrides it)."""

    port: int = Field(default=8000, ge=0, le=65535)
    """Port ``spatial-dropout serve`` listens on (``--port`` overrides it)."""

    workers: int = Field(default=1, ge=1)
    """Worker processes of ``spatial-dropout serve`` (``--workers`` overrides it)."""

    log_level: str = "info"
    """uvicorn's log level: critical, error, warning, info, debug or trace."""
