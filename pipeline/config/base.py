"""Shared building blocks of the configuration models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Section", "PluginChoice"]


class Section(BaseModel):
    """A frozen config section: unknown keys are errors, values are validated by type."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PluginChoice(Section):
    """Select a plugin by its entry-point name; ``params`` is validated by the plugin's own
    ``Settings`` model when the stage is built (``selfreid config check`` does it eagerly)."""

    plugin: str
    params: dict[str, Any] = Field(default_factory=dict)
