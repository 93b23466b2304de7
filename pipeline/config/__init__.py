"""Application configuration: one YAML file per site, validated by pydantic.

``load_config(path)`` reads the file, applies environment overrides (``REDIS_URL``,
``REDIS_PASSWORD``, ``SELFREID_DATA_DIR``, ``SELFREID_API_TOKEN``) and returns a frozen
:class:`AppConfig`. Every problem is a :class:`ConfigError` whose message names the file and
the dotted key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from selfreid.pipeline.config.base import PluginChoice, Section
from selfreid.pipeline.config.ingest import CameraConfig, CropPolicyConfig, IngestConfig
from selfreid.pipeline.config.pool import PoolConfig
from selfreid.pipeline.config.redis import RedisConfig, with_password
from selfreid.pipeline.config.service import ExportConfig, RegistryConfig, TrainServiceConfig
from selfreid.pipeline.config.serving import ApiConfig, EmbedderConfig, MatcherConfig
from selfreid.plugins import streams
from selfreid.plugins.registry import format_validation_error
from selfreid.reid_model.config import TrainConfig

__all__ = [
    "AppConfig",
    "ConfigError",
    "load_config",
    "CameraConfig",
    "CropPolicyConfig",
    "IngestConfig",
    "PluginChoice",
    "PoolConfig",
    "RedisConfig",
    "TrainServiceConfig",
    "ExportConfig",
    "RegistryConfig",
    "EmbedderConfig",
    "MatcherConfig",
    "ApiConfig",
]


class ConfigError(ValueError):
    """A config file is missing, is not YAML, or does not validate."""


class AppConfig(Section):
    """One site: where data lives, which cameras, and every stage's settings."""

    data_dir: str = Field(".selfreid", description="Pool, models and logs live here. Env SELFREID_DATA_DIR overrides.")
    redis: RedisConfig = RedisConfig()
    pool: PoolConfig = PoolConfig()
    ingest: IngestConfig = IngestConfig()
    train: TrainConfig = TrainConfig()
    service: TrainServiceConfig = TrainServiceConfig()
    export: ExportConfig = ExportConfig()
    registry: RegistryConfig = RegistryConfig()
    embedder: EmbedderConfig = EmbedderConfig()
    matcher: MatcherConfig = MatcherConfig()
    api: ApiConfig = ApiConfig()

    @model_validator(mode="after")
    def _cluster_needs_one_slot_per_site(self) -> AppConfig:
        """On a Redis Cluster, a site's keys share one hash slot: the embedder stores embeddings and
        acknowledges crops of every camera in one transaction, which a cluster allows in one slot only."""
        if self.redis.is_cluster and streams.hash_tag(self.pool.prefix) is None:
            raise ValueError(f"pool.prefix: on a Redis Cluster a site's keys must share one slot: "
                             f"write '{{{self.pool.prefix}}}'")
        return self

    def path(self, relative: str) -> Path:
        """A path under ``data_dir`` (absolute paths are returned unchanged)."""
        p = Path(relative)
        return p if p.is_absolute() else Path(self.data_dir) / p


ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "REDIS_URL": ("redis", "url"),
    "SELFREID_DATA_DIR": ("data_dir",),
    "SELFREID_API_TOKEN": ("api", "token"),
}


def _apply_env(raw: dict[str, Any]) -> dict[str, Any]:
    for var, keys in ENV_OVERRIDES.items():
        value = os.environ.get(var)
        if not value:
            continue
        node = raw
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"${var}: cannot override '{'.'.join(keys)}', '{key}' is not a mapping")
        node[keys[-1]] = value
    password, section = os.environ.get("REDIS_PASSWORD"), raw.get("redis")
    if password and isinstance(section, dict) and isinstance(section.get("url"), str):  # the secret stays out of YAML
        raw["redis"] = {**section, "url": with_password(section["url"], password)}
    return raw


def parse_config(raw: dict[str, Any] | None, source: str = "<defaults>") -> AppConfig:
    """Validate an already-parsed mapping (env overrides applied)."""
    raw = _apply_env(dict(raw or {}))
    try:
        return AppConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {format_validation_error(exc)}") from None


def load_config(path: str | Path | None) -> AppConfig:
    """Load and validate a YAML config; ``None`` gives the defaults (the seed method)."""
    if path is None:
        return parse_config({})
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; give the site's YAML file (see configs/)")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                          "save the file as UTF-8") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    return parse_config(raw, str(path))
