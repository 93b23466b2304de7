"""The site report's pieces on tiny inputs: timeline, training curve, throughput, before/after rows."""

from __future__ import annotations

import re

from selfreid.pipeline.report.site import (
    CycleView,
    ReportData,
    curve_svg,
    evaluation_rows,
    identity_colour,
    pack_rows,
    render_html,
    throughput_rows,
    timeline_svg,
)
from selfreid.pipeline.serving.search import Identity, Sighting
from selfreid.pipeline.training.gate import GateDecision, calibration_rows, evidence_text

T0 = 1_700_000_000.0


def _identities() -> list[Identity]:
    walker = Identity(7, 1.0, [Sighting("left", 1, T0, T0 + 10, None), Sighting("right", 4, T0 + 12, T0 + 20, None)])
    stayer = Identity(9, 1.0, [Sighting("left", 2, T0 + 5, T0 + 30, None)])
    return [walker, stayer]


def test_timeline_has_a_lane_per_camera_and_a_bar_per_sighting() -> None:
    svg = timeline_svg(_identities(), width=500, label=100)
    titles = re.findall(r"<title>([^<]*)</title>", svg)
    assert sorted(titles) == sorted([
        "person 7, left track 1, 22:13:20-22:13:30", "person 7, right track 4, 22:13:32-22:13:40",
        "person 9, left track 2, 22:13:25-22:13:50",
    ])
    assert ">left</text>" in svg and ">right</text>" in svg and ">2023-11-14 22:13:20 UTC</text>" in svg
    bars = re.findall(r'<rect x="([\d.]+)" y="(\d+)" width="([\d.]+)" height="\d+" rx="3" fill="(#[0-9a-f]{6})" '
                      r'fill-opacity="([\d.]+)"', svg)
    assert len(bars) == 3
    # time maps linearly onto [label, width - 10]: the first sighting starts at the lane label's edge,
    # the longest ends at the right margin
    starts = sorted(float(x) for x, *_ in bars)
    assert starts[0] == 100.0 and max(float(x) + float(w) for x, _, w, *_ in bars) == 490.0
    # one colour per identity; the cross-camera identity opaque, the single-camera one faint
    assert {(c, o) for *_, c, o in bars} == {(identity_colour(7), "1.0"), (identity_colour(9), "0.35")}
    # the two overlapping sightings of camera "left" are stacked, not drawn over each other
    left = sorted(int(y) for x, y, w, c, o in bars if float(x) < 200)
    assert len(left) == 2 and left[1] - left[0] >= 12
    assert timeline_svg([]) == ""


def test_rows_are_packed_without_overlap() -> None:
    spans = [(0, 10), (5, 8), (9, 12), (11, 20), (10.5, 11)]
    rows = pack_rows(spans)
    assert rows == [0, 1, 1, 2, 0]  # (10.5, 11) fits after (0, 10); (11, 20) needs a third row
    for r in set(rows):
        mine = sorted(s for s, row in zip(spans, rows) if row == r)
        assert all(a[1] < b[0] for a, b in zip(mine, mine[1:]))


def test_curve_joins_the_epochs_step_losses_and_marks_warm_up() -> None:
    history = [{"epoch": 1, "loss": 2.0, "warmup": True, "loss_curve": [3.0, 2.0, 1.0]},
               {"epoch": 2, "loss": 0.5, "warmup": False, "loss_curve": [0.75, 0.25]}]
    svg = curve_svg(history)
    points = re.search(r'<polyline points="([^"]+)"', svg).group(1).split()
    assert len(points) == 5
    ys = [float(p.split(",")[1]) for p in points]
    assert ys == sorted(ys)  # the loss only falls here, so y (downwards) only grows
    assert svg.count('fill="#fff3d6"') == 1  # one warm-up epoch shaded
    assert "epoch 1" in svg and "epoch 2" in svg and ">3<" in svg and ">0.25<" in svg
    assert curve_svg([{"epoch": 1, "loss": float("nan"), "loss_curve": []}]) == ""
    # logs written before loss curves existed still draw (one point per epoch)
    assert curve_svg([{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.5}]).count(",") >= 2


def test_throughput_is_the_rate_between_first_and_last_report() -> None:
    first = {"ingest:0": {"updated": 100.0, "cameras": {"a": {"frames": 10}, "b": {"frames": 0}}},
             "embedder:0": {"updated": 100.0, "embedded": 0}}
    last = {"ingest:0": {"updated": 110.0, "cameras": {"a": {"frames": 60}, "b": {"frames": 50}}},
            "embedder:0": {"updated": 104.0, "embedded": 80},
            "matcher:0": {"updated": 104.0, "embeddings": 5},  # seen once: a count, no rate
            "api:0": {"updated": 104.0}}
    cycle = CycleView("2", "production", "1", "", {}, 100, 2, {}, [{"steps": 30, "seconds": 10.0}] * 2, "")
    rows = {r["stage"]: r for r in throughput_rows(first, last, [cycle])}
    assert rows["ingest:0"] == {"stage": "ingest:0", "count": 110, "unit": "frames", "rate": 10.0}
    assert rows["embedder:0"]["rate"] == 20.0
    assert rows["matcher:0"]["count"] == 5 and rows["matcher:0"]["rate"] is None
    assert rows["train (version 2)"] == {"stage": "train (version 2)", "count": 60, "unit": "steps", "rate": 3.0}
    assert "api:0" not in rows


def test_before_after_rows_and_missing_data() -> None:
    evaluation = {"conreid": {"before": {"mAP": 0.8, "rank1": 1.0}, "after": {"mAP": 0.85, "rank1": 1.0}},
                  "vtest": {"missing": "gt_frames_0001-0400.txt not found"}}
    rows = evaluation_rows(evaluation)
    assert rows[0]["metric"].endswith("mAP") and abs(rows[0]["delta"] - 0.05) < 1e-12
    assert rows[1]["delta"] == 0.0
    assert [r.get("missing") for r in rows[2:]] == ["gt_frames_0001-0400.txt not found"] * 4
    older = {"vtest": {"before": {"idf1": 0.5, "idf1_at_0.85": 0.4}, "after": {"idf1": 0.6, "idf1_at_0.85": 0.5}}}
    by_metric = {r["metric"]: r for r in evaluation_rows(older)}  # written before the product / oracle IDF1
    assert by_metric["vtest: IDF1 at the best threshold (oracle)"] == {
        "metric": "vtest: IDF1 at the best threshold (oracle)", "missing": "no oracle_idf1 in this evaluation"}
    assert abs(by_metric["vtest virtual cameras: IDF1 at the matcher's 0.85"]["delta"] - 0.1) < 1e-12


def test_the_page_shows_each_section_and_escapes_camera_names() -> None:
    data = ReportData(generated="now", version="2", note="", identities=_identities(),
                      timeline=timeline_svg(_identities()),
                      evaluation={"before_version": "1", "after_version": "2", "after_status": "production",
                                  "conreid": {"before": {"mAP": 0.8, "rank1": 1.0}, "after": {"mAP": 0.85, "rank1": 1.0}}})
    page = render_html(data)
    for section in ("cameras", "identities", "timeline", "training", "evaluation", "throughput"):
        assert f'<section id="{section}">' in page
    assert page.count('class="identity multi"') == 1 and "1 identity seen by one camera only" in page
    assert "0.800" in page and "0.850" in page and "+0.050" in page
    hostile = timeline_svg([Identity(1, 1.0, [Sighting("<script>x</script>", 1, T0, T0 + 1, None)])])
    assert "<script>" not in hostile and "&lt;script&gt;" in hostile


def test_recorded_cameras_show_the_position_in_the_recording_beside_the_clock() -> None:
    origins = {"left": [T0 - 100.0, T0 - 5.0]}  # two ingest runs of the left recording; right is live
    svg = timeline_svg(_identities(), origins=origins)
    titles = re.findall(r"<title>([^<]*)</title>", svg)
    assert "person 7, left track 1, 22:13:20-22:13:30 (recording 0:05-0:15)" in titles
    assert "person 7, right track 4, 22:13:32-22:13:40" in titles  # live: the capture time only
    data = ReportData(generated="now", version="2", note="", identities=_identities(), origins=origins)
    assert data.position("left", T0 + 3600) == "1:00:05" and data.position("right", T0) is None
    page = render_html(data)
    assert "recording 0:10&ndash;0:35" in page and page.count("recording ") == 2


def test_the_gate_section_states_both_models_calibrations_and_the_evidence() -> None:
    calibration = {"threshold": 0.61, "separation": 5.06, "auc": 0.99, "n_positive": 12, "n_negative": 30}
    gate = GateDecision(True, "separation 2.10 -> 2.40", {"separation": 2.4}, {"separation": 2.1},
                        {"crops": 200, "tracklets": 20, "usable_tracklets": 18, "positive_pairs": 18,
                         "cannot_link_pairs": 40}, calibration, None).as_dict()
    cycle = CycleView("2", "production", "1", "now", gate, 100, 2, {}, [], "", calibration_rows(gate),
                      evidence_text(gate))
    page = render_html(ReportData(generated="now", version="2", note="", cycles=[cycle]))
    rows = re.findall(r"<tr><td>([^<]*)</td><td class=\"num\">([^<]*)</td><td class=\"num\">([^<]*)</td></tr>", page)
    assert ("match threshold (label-free calibration)", "0.61", "- (none)") in rows
    assert ("cannot-link pairs", "30", "- (none)") in rows
    assert "held-out slice: 200 crops, 20 tracklets (18 usable), 18 positive pairs, 40 cannot-link pairs" in page
