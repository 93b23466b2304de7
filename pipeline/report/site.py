"""The site report: one self-contained HTML page of what the pipeline saw, learnt and decided.

Served by the API (``GET /report``), written by ``selfreid report`` and by ``selfreid demo``. Every
section reads the live state, and says so when it has nothing yet:

* **cameras**: crops in the pool per camera, with a sample of thumbnails (the newest, camera-balanced);
* **header**: one statement of which model version serves and how complete its gallery is
  (:func:`selfreid.pipeline.serving.backfill.serving_statement`);
* **cross-camera identities**: each global identity with its sightings side by side per camera
  (the served model version's gallery; see :func:`selfreid.pipeline.serving.api.report_identities`);
* **timeline**: every sighting as a bar in its camera's lane, one colour per identity (SVG);
* **self-training**: per registered version, its training curve (step losses), the validation
  gate's decision with its numbers, both models' association calibrations and the held-out evidence,
  and the export parity;
* **before / after**: ``{data_dir}/evaluation.json`` when an evaluation was run
  (:mod:`selfreid.pipeline.evaluation.adaptation`; ``selfreid demo`` writes it);
* **throughput**: each stage's rate, from the live status reports, or from the last local run's
  (``{data_dir}/logs/last_run_status.json``) once those have expired.

Charts are inline SVG and thumbnails inline JPEG, so the file opens anywhere, offline.
"""

from __future__ import annotations

import base64
import colorsys
import html
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from selfreid.pipeline.config import AppConfig
from selfreid.pipeline.runtime.status import media_origins, media_position

if TYPE_CHECKING:
    from selfreid.pipeline.serving.search import Identity, IdentitySearch

__all__ = ["EVALUATION_FILE", "ReportData", "collect_report", "render_html", "timeline_svg", "curve_svg",
           "throughput_rows", "write_report"]

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent / "templates"
EVALUATION_FILE = "evaluation.json"
THUMBS_PER_CAMERA = 8


@dataclass
class CameraView:
    camera_id: str
    name: str
    crops: int
    thumbnails: list[str]  # base64 JPEG


@dataclass
class CycleView:
    version: str
    status: str
    parent: str | None
    created: str
    gate: dict[str, Any]
    train_crops: int | None
    epochs: int | None
    parity: dict[str, float]
    history: list[dict[str, Any]]  # the trainer's epoch records
    curve: str  # SVG, "" without a training history
    calibrations: list[dict[str, Any]] = field(default_factory=list)  # both models' calibrations (gate.calibration_rows)
    evidence: str | None = None  # the gate's held-out slice, one line (gate.evidence_text)


@dataclass
class ReportData:
    generated: str
    version: str  # the gallery shown
    note: str
    serving: str = ""  # which version serves and how complete its gallery is (the header)
    identities: list[Identity] = field(default_factory=list)
    cameras: list[CameraView] = field(default_factory=list)
    timeline: str = ""
    cycles: list[CycleView] = field(default_factory=list)
    evaluation: dict[str, Any] | None = None
    throughput: list[dict[str, Any]] = field(default_factory=list)
    throughput_source: str = ""
    origins: dict[str, list[float]] = field(default_factory=dict)  # recorded camera -> media time origins

    def position(self, camera_id: str, ts: float) -> str | None:
        """Where in the recording ``ts`` is (``"1:05"``); ``None`` for a live camera."""
        return media_position(self.origins.get(camera_id, []), ts)

    @property
    def across(self) -> int:
        return sum(len(i.cameras) > 1 for i in self.identities)

    @property
    def evaluation_rows(self) -> list[dict[str, Any]]:
        return evaluation_rows(self.evaluation or {})


EVALUATION_METRICS = (  # (section, key, label)
    ("conreid", "mAP", "Con-ReID held-out ids: mAP"),
    ("conreid", "rank1", "Con-ReID held-out ids: rank-1"),
    ("vtest", "idf1", "vtest virtual cameras: IDF1 (threshold picked on the halves split)"),
    ("vtest", "idf1_at_0.85", "vtest virtual cameras: IDF1 at the matcher's 0.85"),
    ("vtest", "product_idf1", "vtest: IDF1 at product settings (each model's own calibration)"),
    ("vtest", "oracle_idf1", "vtest: IDF1 at the best threshold (oracle)"),
)


def evaluation_rows(evaluation: dict[str, Any]) -> list[dict[str, Any]]:
    """Before / after / change per metric; a measurement without its data says why."""
    rows = []
    for section, key, label in EVALUATION_METRICS:
        part = evaluation.get(section) or {}
        if "missing" in part:
            rows.append({"metric": label, "missing": part["missing"]})
        elif "before" in part and "after" in part:
            before, after = part["before"].get(key), part["after"].get(key)
            if before is None or after is None:  # an older evaluation file, or a model it could not score
                rows.append({"metric": label, "missing": f"no {key} in this evaluation"})
            else:
                rows.append({"metric": label, "before": before, "after": after, "delta": after - before})
    return rows


# --------------------------------------------------------------------------- charts
def identity_colour(global_id: int) -> str:
    """A stable, well-spread colour per identity (golden-ratio hues)."""
    r, g, b = colorsys.hsv_to_rgb((global_id * 0.618034) % 1.0, 0.65, 0.85)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%H:%M:%S")


def pack_rows(spans: Sequence[tuple[float, float]]) -> list[int]:
    """A row per span such that spans in one row do not overlap (greedy interval packing, by start)."""
    ends: list[float] = []
    rows = [0] * len(spans)
    for i in sorted(range(len(spans)), key=lambda k: spans[k][0]):
        start, end = spans[i]
        rows[i] = next((r for r, last in enumerate(ends) if last < start), len(ends))
        ends[rows[i]:rows[i] + 1] = [end]
    return rows


def _span_text(start: float, end: float, origins: Sequence[float]) -> str:
    """``"09:31:05-09:31:20"``, plus the position in the recording for a recorded camera."""
    clock = f"{_clock(start)}-{_clock(end)}"
    first, last = media_position(origins, start), media_position(origins, end)
    return f"{clock} (recording {first}-{last})" if first and last else clock


def timeline_svg(identities: Sequence[Identity], width: int = 960, bar: int = 12, label: int = 110,
                 origins: dict[str, list[float]] | None = None) -> str:
    """One lane per camera, one bar per sighting (tracklet) coloured by identity, overlapping sightings
    stacked; identities seen by several cameras are opaque, the others faint. Hover: who, which
    track, when (time of day, and the position in the recording for recorded cameras: ``origins``)."""
    origins = origins or {}
    sightings = [(i.global_id, len(i.cameras) > 1, s) for i in identities for s in i.sightings]
    if not sightings:
        return ""
    t0 = min(s.start for _, _, s in sightings)
    t1 = max(max(s.end for _, _, s in sightings), t0 + 1.0)
    scale = (width - label - 10) / (t1 - t0)
    parts, top = [], 0
    for n, cam in enumerate(sorted({s.camera_id for _, _, s in sightings})):
        here = [t for t in sightings if t[2].camera_id == cam]
        rows = pack_rows([(s.start, s.end) for _, _, s in here])
        height = (max(rows) + 1) * (bar + 2) + 8
        parts.append(f'<rect x="0" y="{top}" width="{width}" height="{height}" fill="{"#f7f7f7" if n % 2 else "#fff"}"/>'
                     f'<text x="4" y="{top + height / 2 + 4:.1f}" font-size="12">{html.escape(cam)}</text>')
        for (gid, multi, s), row in zip(here, rows):
            tip = f"person {gid}, {s.camera_id} track {s.track_id}, {_span_text(s.start, s.end, origins.get(cam, []))}"
            parts.append(f'<rect x="{label + (s.start - t0) * scale:.1f}" y="{top + 4 + row * (bar + 2)}" '
                         f'width="{max((s.end - s.start) * scale, 2.0):.1f}" height="{bar}" rx="3" '
                         f'fill="{identity_colour(gid)}" fill-opacity="{1.0 if multi else 0.35}">'
                         f'<title>{html.escape(tip)}</title></rect>')
        top += height
    day = datetime.fromtimestamp(t0, timezone.utc).strftime("%Y-%m-%d")
    parts.append(f'<text x="{label}" y="{top + 14}" font-size="11">{day} {_clock(t0)} UTC</text>'
                 f'<text x="{width - 10}" y="{top + 14}" font-size="11" text-anchor="end">{_clock(t1)}</text></svg>')
    return (f'<svg class="timeline" viewBox="0 0 {width} {top + 20}" width="100%" role="img" '
            f'aria-label="identities per camera over time" xmlns="http://www.w3.org/2000/svg">' + "".join(parts))


def curve_svg(history: Sequence[dict[str, Any]], width: int = 460, height: int = 180) -> str:
    """The training loss over steps (each epoch's logged curve, end to end), epochs marked, warm-up
    epochs shaded."""
    epochs = [(h, h.get("loss_curve") or [h["loss"]]) for h in history if isinstance(h.get("loss"), (int, float))]
    points = [v for _, curve in epochs for v in curve if math.isfinite(v)]
    if not points:
        return ""
    lo, hi = min(points), max(points)
    hi = hi if hi > lo else lo + 1e-6
    n = sum(len(c) for _, c in epochs)
    left, bottom = 48, height - 22

    def xy(i: int, v: float) -> str:
        x = left + (width - left - 8) * (i / max(n - 1, 1))
        return f"{x:.1f},{8 + (bottom - 8) * (hi - v) / (hi - lo):.1f}"

    parts = [f'<svg class="curve" viewBox="0 0 {width} {height}" width="{width}" role="img" '
             f'aria-label="training loss" xmlns="http://www.w3.org/2000/svg">',
             f'<rect x="{left}" y="8" width="{width - left - 8}" height="{bottom - 8}" fill="#fafafa" stroke="#ddd"/>']
    i = 0
    for h, curve in epochs:
        x0, x1 = (float(xy(k, lo).split(",")[0]) for k in (i, i + len(curve) - 1))
        if h.get("warmup"):
            parts.append(f'<rect x="{x0:.1f}" y="8" width="{max(x1 - x0, 1):.1f}" height="{bottom - 8}" fill="#fff3d6"/>')
        parts.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{height - 6}" font-size="10" text-anchor="middle">'
                     f'epoch {h.get("epoch", "?")}</text>')
        if i:
            parts.append(f'<line x1="{x0:.1f}" y1="8" x2="{x0:.1f}" y2="{bottom}" stroke="#bbb" stroke-dasharray="3,3"/>')
        i += len(curve)
    line = " ".join(xy(k, v) for k, v in enumerate(v for _, c in epochs for v in c) if math.isfinite(v))
    parts.append(f'<polyline points="{line}" fill="none" stroke="#2266aa" stroke-width="1.6"/>')
    parts.append(f'<text x="{left - 4}" y="16" font-size="10" text-anchor="end">{hi:.3g}</text>'
                 f'<text x="{left - 4}" y="{bottom}" font-size="10" text-anchor="end">{lo:.3g}</text>'
                 f'<text x="4" y="{bottom / 2:.0f}" font-size="10">loss</text></svg>')
    return "".join(parts)


# --------------------------------------------------------------------------- sections
def camera_views(cfg: AppConfig, client: redis.Redis) -> list[CameraView]:
    """Crops per camera and a camera-balanced sample of the newest thumbnails."""
    from selfreid.pipeline.runtime.pool import open_pool

    pool = open_pool(cfg, client)
    counts = pool.count_by_camera()
    names = {c.id: c.name or c.id for c in cfg.ingest.cameras}
    thumbs: dict[str, list[str]] = {cam: [] for cam in counts}
    for crop in pool.snapshot(THUMBS_PER_CAMERA * max(len(counts), 1)):
        if len(thumbs.setdefault(crop.camera_id, [])) < THUMBS_PER_CAMERA:
            thumbs[crop.camera_id].append(base64.b64encode(crop.jpeg).decode())
    return [CameraView(cam, names.get(cam, cam), counts.get(cam, 0), thumbs[cam]) for cam in sorted(thumbs)]


def cycle_views(cfg: AppConfig, client: redis.Redis) -> list[CycleView]:
    """Every registered version, newest first, with its training curve and gate decision (both
    models' calibrations and the held-out evidence it rests on)."""
    from selfreid.pipeline.training.gate import calibration_rows, evidence_text
    from selfreid.pipeline.training.registry import ModelRegistry

    registry = ModelRegistry(cfg.path(cfg.registry.directory), client, cfg.pool.prefix)
    out = []
    for v in reversed(registry.versions()):
        metrics = v.manifest.get("metrics") or {}
        history = metrics.get("history") or []
        created = v.manifest.get("created")
        gate = {**(metrics.get("gate") or {}), **v.gate}
        out.append(CycleView(
            v.version, v.status, v.parent,
            datetime.fromtimestamp(created, timezone.utc).isoformat(timespec="seconds") if created else "",
            gate, metrics.get("train_crops"), metrics.get("epochs"),
            metrics.get("parity") or {}, history, curve_svg(history), calibration_rows(gate), evidence_text(gate)))
    return out


def _rate(first: dict[str, Any], last: dict[str, Any], count: float, count0: float) -> float | None:
    seconds = float(last.get("updated", 0)) - float(first.get("updated", 0))
    return (count - count0) / seconds if seconds > 0 and count > count0 else None


def _sum_cameras(status: dict[str, Any], key: str) -> float:
    return float(sum(c.get(key, 0) for c in (status.get("cameras") or {}).values()))


# stage -> (what is counted, how to read the counter from its status report)
COUNTERS: dict[str, tuple[str, Callable[[dict[str, Any]], float]]] = {
    "ingest": ("frames", lambda s: _sum_cameras(s, "frames")),
    "embedder": ("crops", lambda s: float(s.get("embedded", 0))),
    "matcher": ("embeddings", lambda s: float(s.get("embeddings", 0))),
}


def throughput_rows(first: dict[str, dict[str, Any]], last: dict[str, dict[str, Any]],
                    cycles: Sequence[CycleView] = ()) -> list[dict[str, Any]]:
    """One row per stage instance: its counter and its rate between the first and the last status
    report seen; plus, per trained version, training crops/s (crops x epochs / training seconds)."""
    rows = []
    for name, fields in sorted(last.items()):
        stage = name.split(":", 1)[0]
        if stage not in COUNTERS:
            continue
        unit, read = COUNTERS[stage]
        start = first.get(name, fields)  # seen once: no interval, no rate
        rate = _rate(start, fields, read(fields), read(start))
        rows.append({"stage": name, "count": int(read(fields)), "unit": unit,
                     "rate": None if rate is None else round(rate, 2)})
    for cycle in cycles:
        steps = sum(int(h.get("steps", 0)) for h in cycle.history)
        seconds = sum(float(h.get("seconds", 0)) for h in cycle.history)
        if steps and seconds:
            rows.append({"stage": f"train (version {cycle.version})", "count": steps, "unit": "steps",
                         "rate": round(steps / seconds, 2)})
    return rows


def _status_sources(cfg: AppConfig, client: redis.Redis) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], str]:
    """(first, last, where from): the live status reports when any stage reports, else the last run's."""
    from selfreid.pipeline.orchestration.run import LAST_RUN_STATUS
    from selfreid.pipeline.runtime.status import read_status

    live = read_status(client, cfg.pool.prefix)
    saved_path = cfg.path("logs") / LAST_RUN_STATUS
    try:
        saved = json.loads(saved_path.read_text())
    except (OSError, ValueError):
        saved = {}
    if any(k.split(":", 1)[0] in COUNTERS for k in live):
        return {}, live, "live status reports"
    if saved:
        when = datetime.fromtimestamp(saved.get("saved", 0), timezone.utc).isoformat(timespec="seconds")
        return saved.get("first_stages", {}), saved.get("stages", {}), f"the last local run (ended {when})"
    return {}, {}, ""


def read_evaluation(cfg: AppConfig) -> dict[str, Any] | None:
    try:
        evaluation: dict[str, Any] = json.loads(cfg.path(EVALUATION_FILE).read_text())
    except (OSError, ValueError):
        return None
    return evaluation


def collect_report(cfg: AppConfig, search: IdentitySearch) -> ReportData:
    """Every section's data (``search``: the :class:`IdentitySearch` of the API or the CLI)."""
    from selfreid.pipeline.serving.api import report_identities
    from selfreid.pipeline.serving.backfill import serving_statement

    version, identities, note = report_identities(search)
    client = search.client
    served = search.embedder.model_version or ""
    if version and version != served:  # one statement of who serves (the header), this only says what is shown
        note = (f"Version {served} has no identity yet (its gallery is still empty), so the identities below "
                f"come from version {version}'s gallery."
                if served else f"No model could be loaded; the identities below come from version {version}'s gallery.")
    cycles = cycle_views(cfg, client)
    first, last, source = _status_sources(cfg, client)
    origins = media_origins(client, cfg.pool.prefix)
    return ReportData(
        generated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        version=version, note=note, identities=identities,
        serving=serving_statement(client, cfg.pool.prefix, served or None),
        cameras=camera_views(cfg, client),
        timeline=timeline_svg(identities, origins=origins),
        origins=origins,
        cycles=cycles,
        evaluation=read_evaluation(cfg),
        throughput=throughput_rows(first, last, cycles),
        throughput_source=source,
    )


def render_html(data: ReportData) -> str:
    import jinja2
    from markupsafe import Markup

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
    env.filters["svg"] = Markup  # charts are built here from escaped text
    env.globals["colour"] = identity_colour
    env.tests["multiple"] = lambda cameras: len(cameras) > 1
    return env.get_template("report.html").render(r=data)


def write_report(cfg: AppConfig, client: redis.Redis, out: Path) -> ReportData:
    """Collect, render and write the page to ``out``; returns what it shows."""
    from selfreid.pipeline.serving.search import IdentitySearch

    data = collect_report(cfg, IdentitySearch(cfg, client))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(data))
    return data
