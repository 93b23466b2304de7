"""Detectors on real frames with real offline weights: people of vtest frame 1 are found where the gt says."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from selfreid.pipeline.evaluation.detection import detection_recall
from selfreid.plugins.contracts import Detection
from selfreid.plugins.detectors.common import DetectorError, letterbox, nms, resolve_device
from selfreid.plugins.detectors.hog import HogDetector
from selfreid.plugins.detectors.yolo import YoloDetector
from selfreid.plugins.detectors.yolox import YoloxOnnxDetector, decode_yolox, dynamic_model, fit_input_hw
from selfreid.plugins.onnx_session import session_options
from vtest_data import read_vtest, vtest_gt

DETECTORS = {
    "yolo": lambda: YoloDetector(YoloDetector.Settings()),
    "yolox": lambda: YoloxOnnxDetector(YoloxOnnxDetector.Settings()),
    "hog": lambda: HogDetector(HogDetector.Settings()),
}


@pytest.fixture(scope="module")
def frames(shared_data: Path) -> list[np.ndarray]:
    return read_vtest(shared_data, 2)


@pytest.mark.parametrize("name", list(DETECTORS))
def test_detector_finds_the_people_of_frame_1(name: str, frames: list[np.ndarray], shared_data: Path) -> None:
    detector = DETECTORS[name]()
    (dets,) = detector.detect(frames[:1])
    gt = vtest_gt(shared_data, max_frame=1)
    score = detection_recall(gt, {1: dets}, iou=0.5)
    assert score.tp > (score.tp + score.fn) / 2, f"{name}: {score.as_dict()} boxes {[d.box for d in dets]}"
    for d in dets:
        x1, y1, x2, y2 = d.box
        assert 0 <= x1 < x2 <= 768 and 0 <= y1 < y2 <= 576
        assert 0 <= d.confidence <= 1 and d.track_id is None


def test_yolo_runs_one_batched_predict(frames: list[np.ndarray], monkeypatch: pytest.MonkeyPatch) -> None:
    det = YoloDetector(YoloDetector.Settings(imgsz=320), device="auto")
    assert det.device == resolve_device("auto") and det.person_class == 0
    calls: list[int] = []
    predict = det.model.predict
    monkeypatch.setattr(
        det.model, "predict", lambda images, **kw: calls.append(len(images)) or predict(images, **kw)
    )
    out = det.detect([frames[0], frames[1], frames[0]])
    assert calls == [3] and len(out) == 3
    assert [d.box for d in out[0]] == [d.box for d in out[2]]
    assert det.detect([]) == []


def test_yolo_weights_errors_explain_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DetectorError, match=r"YOLO weights not found: .*missing\.pt.*yolo11s\.pt"):
        YoloDetector(YoloDetector.Settings(weights=str(tmp_path / "missing.pt")))


def test_yolox_loops_over_its_fixed_batch(frames: list[np.ndarray]) -> None:
    det = YoloxOnnxDetector(YoloxOnnxDetector.Settings())
    assert det.batch == 1 and det.input_hw == (416, 416)
    both = det.detect(frames)
    assert len(both) == 2 and both[0] == det.detect(frames[:1])[0]
    with pytest.raises(DetectorError, match="YOLOX weights not found"):
        YoloxOnnxDetector(YoloxOnnxDetector.Settings(weights="/nonexistent/x.onnx"))


def test_decode_yolox_grid_arithmetic() -> None:
    raw = np.zeros((52 * 52 + 26 * 26 + 13 * 13, 6), dtype=np.float32)
    raw[1 * 52 + 2, :4] = [0.5, 0.5, 0.0, 0.0]  # stride 8, cell (x=2, y=1)
    raw[52 * 52 + 26 * 26, :4] = [0.0, 0.0, np.log(2.0), 0.0]  # first stride-32 cell
    out = decode_yolox(raw, (416, 416))
    assert np.allclose(out[1 * 52 + 2, :4], [16, 8, 24, 16])
    assert np.allclose(out[52 * 52 + 26 * 26, :4], [-32, -16, 32, 16])


def test_letterbox_pads_bottom_right_and_nms_keeps_the_best() -> None:
    image = np.full((100, 200, 3), 7, np.uint8)
    boxed, scale = letterbox(image, (416, 416))
    assert scale == pytest.approx(2.08) and boxed.shape == (416, 416, 3)
    assert (boxed[:208] == 7).all() and (boxed[208:] == 114).all()
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60]], float)
    assert sorted(nms(boxes, np.array([0.5, 0.9, 0.3]), 0.5).tolist()) == [1, 2]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).size == 0


def test_hog_boxes_are_shrunk_windows(frames: list[np.ndarray]) -> None:
    loose = HogDetector(HogDetector.Settings(pad_x=0.0, pad_y=0.0)).detect(frames[:1])[0]
    tight = HogDetector(HogDetector.Settings()).detect(frames[:1])[0]
    width = lambda d: d.box[2] - d.box[0]  # noqa: E731
    assert len(loose) == len(tight) > 0
    assert sorted(round(width(d) * 0.7, 3) for d in loose) == sorted(round(width(d), 3) for d in tight)
    assert all(isinstance(d, Detection) for d in tight)


def test_yolox_batch_frames_runs_one_forward_pass_with_the_same_boxes(frames: list[np.ndarray]) -> None:
    single = YoloxOnnxDetector(YoloxOnnxDetector.Settings())
    batched = YoloxOnnxDetector(YoloxOnnxDetector.Settings(batch_frames=True))
    assert batched.batch is None and batched.input_hw == single.input_hw == (416, 416)
    calls: list[int] = []
    run = batched.session.run
    batched.session.run = lambda names, feed: calls.append(len(feed[batched.input_name])) or run(names, feed)  # type: ignore[method-assign]
    images = [frames[0], frames[1], frames[0]]
    out = batched.detect(images)
    assert calls == [3]
    for got, want in zip(out, single.detect(images)):
        assert len(got) == len(want) > 0
        assert np.allclose([d.box for d in got], [d.box for d in want], atol=1e-2)


def test_yolox_fit_input_keeps_the_scale_and_drops_the_padding(frames: list[np.ndarray]) -> None:
    assert fit_input_hw((576, 768, 3), (416, 416)) == (320, 416)
    assert fit_input_hw((768, 576, 3), (416, 416)) == (416, 320)
    assert fit_input_hw((416, 416, 3), (416, 416)) == (416, 416)
    fit = YoloxOnnxDetector(YoloxOnnxDetector.Settings(fit_input=True))
    assert fit.batch == 1 and fit._batch_hw(frames) == (320, 416)
    square = YoloxOnnxDetector(YoloxOnnxDetector.Settings()).detect(frames[:1])[0]
    got = fit.detect(frames[:1])[0]
    assert len(got) == len(square) > 0
    assert np.allclose(sorted(d.box for d in got), sorted(d.box for d in square), atol=2.0)


def test_yolox_session_threads_follow_the_cores_this_process_may_use() -> None:
    options = YoloxOnnxDetector(YoloxOnnxDetector.Settings()).session.get_session_options()
    assert options.intra_op_num_threads == len(os.sched_getaffinity(0))
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    spinning = session_options(3, spin=True)
    assert spinning.intra_op_num_threads == 3 and spinning.get_session_config_entry("session.intra_op.allow_spinning") == "1"


def test_dynamic_model_leaves_an_already_dynamic_export_alone(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 32, 32])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3, 32, 32])
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["output"])], "g", [x], [y])
    onnx.save(helper.make_model(graph), tmp_path / "dyn.onnx")
    assert dynamic_model(tmp_path / "dyn.onnx") is None
