"""Plugin discovery through real entry points: a dummy distribution on sys.path is found by name."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from selfreid.plugins import registry
from selfreid.plugins.contracts import Detection, Detector


@pytest.fixture()
def dummy_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An installed-looking third-party package (dist-info with entry_points.txt) on sys.path."""
    (tmp_path / "thirdparty_dets.py").write_text(
        textwrap.dedent(
            """
            from pydantic import BaseModel, ConfigDict
            from selfreid.plugins.contracts import Detection

            class ConstantDetector:
                class Settings(BaseModel):
                    model_config = ConfigDict(extra="forbid", frozen=True)
                    confidence: float = 0.5

                def __init__(self, settings, device="auto"):
                    self.settings, self.device = settings, device

                def detect(self, images):
                    return [[Detection((0, 0, 10, 20), self.settings.confidence)] for _ in images]

            class NotADetector:
                def __init__(self, device="auto"):
                    pass
            """
        )
    )
    dist = tmp_path / "thirdparty_dets-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-dets\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[selfreid.detectors]\nconstant = thirdparty_dets:ConstantDetector\nbroken = thirdparty_dets:NotADetector\n"
        "missing = thirdparty_dets_gone:Nothing\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("thirdparty_dets", None)


def test_third_party_plugin_is_discovered_and_selected_by_name(dummy_distribution: Path) -> None:
    names = {(p.kind, p.name, p.distribution) for p in registry.available("detectors")}
    assert ("detectors", "constant", "thirdparty-dets") in names
    det = registry.create("detectors", "constant", {"confidence": 0.9}, where="ingest.detector", device="cpu")
    assert isinstance(det, Detector)
    assert det.detect([None, None]) == [[Detection((0, 0, 10, 20), 0.9)]] * 2


def test_unknown_name_lists_the_available_ones(dummy_distribution: Path) -> None:
    with pytest.raises(registry.PluginError, match=r"no detector plugin named 'nope'; available: .*constant"):
        registry.load("detectors", "nope")


def test_bad_params_name_the_key(dummy_distribution: Path) -> None:
    with pytest.raises(registry.PluginError, match=r"ingest\.detector\.params: unknown key 'confidenc'"):
        registry.create("detectors", "constant", {"confidenc": 1}, where="ingest.detector")
    with pytest.raises(registry.PluginError, match=r"'confidence'.*number"):
        registry.create("detectors", "constant", {"confidence": "high"}, where="ingest.detector")


def test_contract_and_import_failures_are_clear(dummy_distribution: Path) -> None:
    with pytest.raises(registry.PluginError, match="does not implement Detector: it lacks detect "):
        registry.create("detectors", "broken")
    with pytest.raises(registry.PluginError, match="failed to import"):
        registry.load("detectors", "missing")
    with pytest.raises(registry.PluginError, match="unknown plugin kind"):
        registry.available("cameras")


def test_every_builtin_plugin_is_declared_and_importable() -> None:
    """Every entry point this distribution declares resolves to a class (optional backends such as
    GStreamer import their libraries lazily, so the class itself always imports)."""
    infos = [p for p in registry.available() if p.distribution == "selfreid"]
    assert {p.kind for p in infos} == set(registry.KINDS)
    for info in infos:
        assert isinstance(registry.load(info.kind, info.name), type), info
