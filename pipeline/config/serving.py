"""Embedder, matcher and the HTTP API."""

from __future__ import annotations

from pydantic import Field

from selfreid.pipeline.config.base import PluginChoice, Section

__all__ = ["EmbedderConfig", "MatcherConfig", "ApiConfig"]


class EmbedderConfig(PluginChoice):
    plugin: str = "onnx"
    batch_size: int = Field(32, ge=1)
    max_wait_ms: int = Field(50, ge=0, description="Dynamic batching: wait at most this long to fill a batch.")


class MatcherConfig(Section):
    index: PluginChoice = PluginChoice(plugin="faiss")
    matcher: PluginChoice = PluginChoice(plugin="cross_camera")


class ApiConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
