"""Sources on real media: vtest.avi, image folders, a dead RTSP port, a re-opened stream, GStreamer."""

from __future__ import annotations

import importlib.util
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest

from selfreid.pipeline.config import CameraConfig
from selfreid.plugins.contracts import SourceState
from selfreid.plugins.sources.base import Backoff, SourceError
from selfreid.plugins.sources.images import ImageFolderSource
from selfreid.plugins.sources.video import FileSource, StreamSource, WebcamSource
from vtest_data import read_vtest, vtest_path


def camera(uri: str | Path, **kw) -> CameraConfig:
    return CameraConfig(id=kw.pop("id", "cam1"), uri=str(uri), **kw)


def take(source, n: int) -> list:
    out = []
    for frame in source.frames():
        out.append(frame)
        if len(out) == n:
            break
    return out


def test_file_source_indices_timestamps_and_pixels(shared_data: Path) -> None:
    src = FileSource(FileSource.Settings(), camera=camera(vtest_path(shared_data), id="hall"))
    assert src.state == SourceState.CONNECTING
    frames = take(src, 5)
    assert [f.index for f in frames] == [1, 2, 3, 4, 5]
    assert {f.camera_id for f in frames} == {"hall"}
    assert np.allclose(np.diff([f.timestamp for f in frames]), 0.1)  # the container's 10 fps
    assert abs(frames[0].timestamp - time.time()) < 60
    assert frames[0].image.shape == (576, 768, 3) and frames[0].image.dtype == np.uint8
    assert np.array_equal(frames[2].image, read_vtest(shared_data, 3)[2])
    assert src.state == SourceState.RUNNING


def test_file_source_stride_reads_to_the_end(shared_data: Path) -> None:
    src = FileSource(FileSource.Settings(fps=7.0), camera=camera(vtest_path(shared_data), stride=100))
    frames = list(src.frames())
    assert [f.index for f in frames] == [1, 101, 201, 301, 401, 501, 601, 701]
    assert np.allclose(
        np.diff([f.timestamp for f in frames]), 100 / 7.0
    )  # params.fps overrides the container
    assert src.counters["decoded"] == 795 and src.counters["corrupt"] == 0
    assert src.state == SourceState.FINISHED


def test_file_source_loop_starts_over_with_continuous_numbers_and_time(shared_data: Path) -> None:
    src = FileSource(FileSource.Settings(loop=True), camera=camera(vtest_path(shared_data), stride=100))
    frames = take(src, 10)  # vtest has 795 frames: 1..701 from the first pass, 801 and 901 from the second
    assert [f.index for f in frames] == [1, 101, 201, 301, 401, 501, 601, 701, 801, 901]
    assert np.allclose(np.diff([f.timestamp for f in frames]), 10.0)  # 100 frames at 10 fps, across the seam
    assert np.array_equal(frames[8].image, read_vtest(shared_data, 6)[5])  # 801 = frame 6 of pass 2
    assert src.counters["loops"] == 1 and src.counters["decoded"] == 901
    assert src.state == SourceState.RUNNING


def test_file_source_target_fps_downsamples_on_the_media_clock(shared_data: Path) -> None:
    src = FileSource(FileSource.Settings(), camera=camera(vtest_path(shared_data), target_fps=2.5))
    assert [f.index for f in take(src, 4)] == [1, 5, 9, 13]


def test_realtime_paces_and_close_interrupts(shared_data: Path) -> None:
    src = FileSource(FileSource.Settings(fps=20.0), camera=camera(vtest_path(shared_data), realtime=True))
    start = time.monotonic()
    take(src, 5)
    assert time.monotonic() - start >= 0.19  # frames 1..5 are 0.2 s of media at 20 fps
    slow = FileSource(FileSource.Settings(fps=0.5), camera=camera(vtest_path(shared_data), realtime=True))
    it = slow.frames()
    next(it)
    threading.Timer(0.2, slow.close).start()
    start = time.monotonic()
    assert list(it) == []  # the 2 s wait for frame 2 is cut short
    assert time.monotonic() - start < 1.5


def test_roi_masks_outside_and_keeps_full_frame(shared_data: Path) -> None:
    src = FileSource(FileSource.Settings(), camera=camera(vtest_path(shared_data), roi=(100, 50, 300, 250)))
    image = take(src, 1)[0].image
    original = read_vtest(shared_data, 1)[0]
    assert image.shape == original.shape
    assert np.array_equal(image[50:250, 100:300], original[50:250, 100:300])
    assert image[:50].max() == 0 and image[:, 300:].max() == 0


def test_oversized_frames_are_downscaled_or_rejected(shared_data: Path) -> None:
    small = FileSource(FileSource.Settings(max_pixels=384 * 288), camera=camera(vtest_path(shared_data)))
    assert [f.image.shape for f in take(small, 2)] == [(288, 384, 3)] * 2
    assert small.counters["oversize_downscaled"] == 2
    strict = FileSource(
        FileSource.Settings(max_pixels=1000, oversize="reject"),
        camera=camera(vtest_path(shared_data), stride=200),
    )
    assert list(strict.frames()) == []
    assert strict.counters["oversize_rejected"] == 4 and "max_pixels" in strict.last_error


def test_a_recording_with_a_start_time_is_stamped_in_media_time(shared_data: Path) -> None:
    start = datetime(2026, 12, 1, 9, 30, tzinfo=timezone.utc)
    src = FileSource(FileSource.Settings(), camera=camera(vtest_path(shared_data), stride=10,
                                                          start_time="2026-12-01T10:30:00+01:00"))
    frames = take(src, 3)
    assert [f.timestamp - start.timestamp() for f in frames] == pytest.approx([0.0, 1.0, 2.0])  # 10 fps, stride 10
    assert src.media_origin == start.timestamp()
    assert camera("x.mp4", start_time="2026-12-01T09:30:00").start_time == start  # no zone = UTC
    unset = FileSource(FileSource.Settings(), camera=camera(vtest_path(shared_data)))
    first = take(unset, 1)[0]
    assert first.timestamp == unset.media_origin and abs(first.timestamp - time.time()) < 60
    with pytest.raises(ValueError, match="start_time is for recordings"):
        camera("rtsp://cam/1", source="rtsp", start_time="2026-12-01T09:30:00")


def test_missing_and_undecodable_files(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"camera cam1: video file not found: .*nope\.mp4"):
        FileSource(FileSource.Settings(), camera=camera(tmp_path / "nope.mp4"))
    with pytest.raises(SourceError, match=r"camera cam1: .* is a directory, not a video file \(for a folder of images"):
        FileSource(FileSource.Settings(), camera=camera(tmp_path))
    bogus = tmp_path / "notes.avi"
    bogus.write_text("not a video at all")
    src = FileSource(FileSource.Settings(), camera=camera(bogus))
    assert list(src.frames()) == []  # no exception out of frames()
    assert src.state == SourceState.FAILED
    assert src.counters["open_failed"] == 1 and "notes.avi" in src.last_error


def test_image_folder_in_name_order_with_a_corrupt_file(tmp_path: Path, shared_data: Path) -> None:
    frames = read_vtest(shared_data, 3)
    for i, image in enumerate(frames):
        cv2.imwrite(str(tmp_path / f"{i * 2:06d}.png"), image)
    (tmp_path / "000001.jpg").write_bytes(b"\xff\xd8 truncated")  # sorts between the first two
    (tmp_path / "readme.txt").write_text("ignored")
    src = ImageFolderSource(ImageFolderSource.Settings(fps=5.0), camera=camera(tmp_path))
    out = list(src.frames())
    assert [f.index for f in out] == [1, 3, 4]
    assert np.array_equal(out[1].image, frames[1])
    assert np.isclose(out[1].timestamp - out[0].timestamp, 2 / 5.0)
    assert src.counters["corrupt"] == 1 and src.state == SourceState.FINISHED
    with pytest.raises(SourceError, match="image folder not found"):
        ImageFolderSource(ImageFolderSource.Settings(), camera=camera(tmp_path / "missing"))
    with pytest.raises(SourceError, match="is a file, not a folder of images"):
        ImageFolderSource(ImageFolderSource.Settings(), camera=camera(tmp_path / "000000.png"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no images"):
        ImageFolderSource(ImageFolderSource.Settings(), camera=camera(tmp_path / "empty"))


def test_backoff_grows_is_capped_and_jittered() -> None:
    b = Backoff(initial=0.5, maximum=4.0, factor=2.0, jitter=0.0)
    assert [b.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    b.reset()
    assert b.next_delay() == 0.5
    jittered = Backoff(initial=1.0, maximum=10.0, jitter=0.25)
    delays = [jittered.next_delay() for _ in range(1)] + [
        Backoff(1.0, 10.0, jitter=0.25).next_delay() for _ in range(50)
    ]
    assert all(0.75 <= d <= 1.25 for d in delays) and len(set(delays)) > 1


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fast_retry(**kw) -> dict:
    return {
        "reconnect_initial_s": 0.05,
        "reconnect_max_s": 0.2,
        "open_timeout_s": 2.0,
        "read_timeout_s": 2.0,
        **kw,
    }


def test_dead_rtsp_url_reconnects_with_backoff_and_closes_promptly() -> None:
    src = StreamSource(
        StreamSource.Settings(**fast_retry()), camera=camera(f"rtsp://127.0.0.1:{closed_port()}/live")
    )
    errors: list[BaseException] = []
    got: list = []

    def consume() -> None:
        try:
            got.extend(src.frames())
        except BaseException as exc:  # noqa: BLE001 - the test asserts there is none
            errors.append(exc)

    thread = threading.Thread(target=consume)
    thread.start()
    deadline = time.monotonic() + 20
    while src.reconnects < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert src.reconnects >= 3
    assert src.state in (SourceState.RECONNECTING, SourceState.CONNECTING)
    assert src.counters["open_failed"] >= 3 and "127.0.0.1" in src.last_error
    src.close()
    thread.join(timeout=3)
    assert not thread.is_alive() and errors == [] and got == []
    assert src.state == SourceState.FINISHED


def test_stream_gives_up_after_max_reconnects() -> None:
    src = StreamSource(
        StreamSource.Settings(**fast_retry(max_reconnects=2)),
        camera=camera(f"rtsp://127.0.0.1:{closed_port()}/x"),
    )
    assert list(src.frames()) == []
    assert src.reconnects == 2 and src.state == SourceState.FAILED


def test_stream_reopens_after_the_stream_ends(tmp_path: Path, shared_data: Path) -> None:
    """A stream that ends (here a short file through the FFmpeg backend) is reopened; indices continue."""
    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (768, 576))
    for image in read_vtest(shared_data, 4):
        writer.write(image)
    writer.release()
    src = StreamSource(StreamSource.Settings(**fast_retry()), camera=camera(clip))
    frames = take(src, 10)
    assert [f.index for f in frames] == list(range(1, 11))
    assert src.reconnects == 2 and src.state == SourceState.RUNNING
    assert src.counters["stream_lost"] == 2
    src.close()


def test_webcam_needs_an_index_and_survives_a_missing_device() -> None:
    with pytest.raises(SourceError, match="device index"):
        WebcamSource(WebcamSource.Settings(), camera=camera("front-door"))
    src = WebcamSource(
        WebcamSource.Settings(
            **{k: v for k, v in fast_retry(max_reconnects=1).items() if "timeout" not in k}
        ),
        camera=camera("97"),
    )
    assert list(src.frames()) == []
    assert src.state == SourceState.FAILED and src.counters["open_failed"] == 2


HAVE_GI = importlib.util.find_spec("gi") is not None


@pytest.mark.skipif(
    not HAVE_GI, reason="PyGObject (gi) is not installed: the optional GStreamer source cannot run"
)
def test_gstreamer_pipeline_frames_stride_and_end() -> None:
    from selfreid.plugins.sources.gstreamer import GStreamerSource

    uri = "videotestsrc num-buffers=12 ! video/x-raw,width=320,height=240,framerate=30/1"
    src = GStreamerSource(GStreamerSource.Settings(live=False), camera=camera(uri, stride=4))
    frames = list(src.frames())
    assert [f.index for f in frames] == [1, 5, 9]
    assert frames[0].image.shape == (240, 320, 3) and frames[0].image.dtype == np.uint8
    assert np.allclose(np.diff([f.timestamp for f in frames]), 4 / 30.0, atol=1e-3)  # buffer PTS
    assert src.state == SourceState.FINISHED


@pytest.mark.skipif(
    not HAVE_GI, reason="PyGObject (gi) is not installed: the optional GStreamer source cannot run"
)
def test_gstreamer_live_restarts_and_rejects_bad_pipelines() -> None:
    from selfreid.plugins.sources.gstreamer import GStreamerSource

    with pytest.raises(SourceError, match="bad GStreamer pipeline"):
        GStreamerSource(GStreamerSource.Settings(), camera=camera("no_such_element_xyz ! fakesink"))
    uri = "videotestsrc num-buffers=3 ! video/x-raw,width=64,height=48"
    src = GStreamerSource(
        GStreamerSource.Settings(reconnect_initial_s=0.05, reconnect_max_s=0.1), camera=camera(uri)
    )
    frames = take(src, 7)
    # 3 buffers per run; a live appsink may drop a buffer when the consumer lags, hence ">="
    assert [f.index for f in frames] == list(range(1, 8)) and src.reconnects >= 2
    assert src.counters["stream_lost"] == src.reconnects
    src.close()


def test_gstreamer_missing_gi_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from selfreid.plugins.sources import gstreamer

    real_import = builtins.__import__

    def no_gi(name, *args, **kwargs):
        if name == "gi" or name.startswith("gi."):
            raise ImportError("No module named 'gi'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_gi)
    with pytest.raises(SourceError, match=r"PyGObject.*pip install 'selfreid\[gstreamer\]'"):
        gstreamer.GStreamerSource(gstreamer.GStreamerSource.Settings(), camera=camera("videotestsrc"))


def test_camera_params_are_validated_by_the_source_settings(shared_data: Path) -> None:
    from selfreid.plugins import registry

    cam = camera(vtest_path(shared_data), params={"fsp": 7})
    with pytest.raises(registry.PluginError, match=r"ingest\.cameras\[0\]\.params: unknown key 'fsp'"):
        registry.create("sources", "file", cam.params, where="ingest.cameras[0]", camera=cam)
    src = registry.create("sources", "file", {"fps": 7}, where="ingest.cameras[0]", camera=cam)
    assert src.fps == 7
