"""Plugin discovery through Python entry points, loaded lazily by name.

Each stage contract has its own entry-point group (``selfreid.detectors``, ...). A plugin
is a class that satisfies the stage's Protocol; it may declare a nested pydantic
``Settings`` model, which validates the ``params`` mapping given in YAML before the
class is constructed as ``cls(settings, **dependencies)``.

The Protocol is the whole contract: :func:`create` checks the instance against it and names every
member it lacks (the stage's base class in :mod:`~selfreid.plugins.contracts` gives the optional ones).
A third-party package adds a detector with one entry point in its own ``pyproject.toml``::

    [project.entry-points."selfreid.detectors"]
    mydet = "my_package.detector:MyDetector"

and then selects it in YAML with ``detector: {plugin: mydet, params: {...}}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from pydantic import BaseModel, ValidationError

from selfreid.plugins import contracts

__all__ = [
    "KINDS", "PluginError", "PluginInfo", "available", "load", "create", "validate_params",
    "protocol_members",
]

KINDS: dict[str, type] = {
    "sources": contracts.Source,
    "detectors": contracts.Detector,
    "trackers": contracts.Tracker,
    "pools": contracts.PoolStore,
    "embedders": contracts.Embedder,
    "indexes": contracts.Index,
    "matchers": contracts.Matcher,
    "trainers": contracts.Trainer,
}
"""Entry-point group suffix -> the Protocol its plugins satisfy."""

GROUP_PREFIX = "selfreid."


class PluginError(RuntimeError):
    """A plugin could not be found, imported, configured or started, or does not meet its contract."""


@dataclass(frozen=True)
class PluginInfo:
    kind: str
    name: str
    target: str
    distribution: str


def _group(kind: str) -> str:
    if kind not in KINDS:
        raise PluginError(f"unknown plugin kind {kind!r}; kinds are: {', '.join(KINDS)}")
    return GROUP_PREFIX + kind


def _entry_points(kind: str) -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=_group(kind))}


def available(kind: str | None = None) -> list[PluginInfo]:
    """Every installed plugin (of one kind, or of all kinds), without importing any."""
    kinds = [kind] if kind else list(KINDS)
    infos = []
    for k in kinds:
        for name, ep in sorted(_entry_points(k).items()):
            dist = ep.dist.name if ep.dist is not None else "?"
            infos.append(PluginInfo(kind=k, name=name, target=ep.value, distribution=dist))
    return infos


def load(kind: str, name: str, where: str = "") -> type:
    """Import and return the plugin class registered as ``name`` in ``kind``'s group; errors start
    with ``where`` (the config key that selected it), when given."""
    eps = _entry_points(kind)
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none installed"
        singular = kind[:-1] if kind != "indexes" else "index"
        raise PluginError(f"{where + ': ' if where else ''}no {singular} plugin named {name!r}; available: {known}")
    try:
        return eps[name].load()
    except ImportError as exc:
        raise PluginError(f"plugin {kind}/{name} ({eps[name].value}) failed to import: {exc}") from exc


def validate_params(cls: type, params: dict[str, Any] | None, where: str) -> BaseModel | None:
    """Validate ``params`` against ``cls.Settings``; errors name each offending key and ``where``."""
    settings_model: type[BaseModel] | None = getattr(cls, "Settings", None)
    if settings_model is None:
        if params:
            raise PluginError(f"{where}: plugin {cls.__name__} takes no params, got {sorted(params)}")
        return None
    try:
        return settings_model.model_validate(params or {})
    except ValidationError as exc:
        raise PluginError(f"{where}: {format_validation_error(exc)}") from None


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One line per problem, each naming the dotted key: ``detector.params.conf: ...``."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown key '{key}'")
        elif err["type"] == "missing":
            lines.append(f"missing key '{key}'")
        elif isinstance(err.get("input"), dict):  # a whole section: the message says what is wrong
            lines.append(f"'{key}': {err['msg']}")
        else:
            lines.append(f"'{key}': {err['msg']} (got {err.get('input')!r})")
    return "; ".join(lines)


def create(kind: str, name: str, params: dict[str, Any] | None = None, where: str = "config", **deps: Any) -> Any:
    """Load, configure and construct a plugin, then check it against its stage Protocol.

    Any error of the plugin's constructor (weights not found, a missing file) becomes a
    :class:`PluginError` naming ``where``, so callers handle one error type."""
    cls = load(kind, name, where)
    settings = validate_params(cls, params, f"{where}.params")
    try:
        instance = cls(settings, **deps) if settings is not None else cls(**deps)
    except Exception as exc:  # noqa: BLE001 - plugins raise their own error types
        raise PluginError(f"{where}: {exc}") from exc
    protocol = KINDS[kind]
    if not isinstance(instance, protocol):
        missing = [m for m in protocol_members(protocol) if not hasattr(instance, m)]
        raise PluginError(
            f"plugin {kind}/{name} does not implement {protocol.__name__}: it lacks {', '.join(missing)} "
            f"(see selfreid.plugins.contracts.{protocol.__name__})"
        )
    return instance


def protocol_members(protocol: type) -> list[str]:
    """The members a plugin of ``protocol`` must have: its attributes, properties and methods."""
    names = set(vars(protocol).get("__annotations__", {}))
    names |= {n for n, v in vars(protocol).items() if callable(v) or isinstance(v, property)}
    return sorted(n for n in names if not n.startswith("_") or n == "__len__")
