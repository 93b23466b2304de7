"""GStreamer and onnxruntime in one process: a bad model after a GStreamer camera raises, never aborts.

libgstreamer links libunwind; once GStreamer is loaded, its unwinder used to take over C++ exception
unwinding for onnxruntime and a bad model file killed the process (SIGABRT). Run in a subprocess so
that the abort, if it came back, fails this test instead of the whole run.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import sys
    import torch  # noqa: F401  (loaded first, as in the services)

    from selfreid.pipeline.config import CameraConfig
    from selfreid.plugins.embedders.onnx_embedder import EmbedderError, OnnxEmbedder
    from selfreid.plugins.sources.gstreamer import GStreamerSource

    uri = "videotestsrc num-buffers=4 ! video/x-raw,width=64,height=48,framerate=30/1"
    source = GStreamerSource(GStreamerSource.Settings(live=False),
                             camera=CameraConfig(id="c", source="gstreamer", uri=uri))
    assert len(list(source.frames())) == 4
    junk = sys.argv[1]
    open(junk, "wb").write(b"not a model")
    try:
        OnnxEmbedder().load(junk)
    except EmbedderError as exc:
        print("raised:", exc)
    """
)


@pytest.mark.skipif(importlib.util.find_spec("gi") is None, reason="PyGObject (gi) is not installed")
def test_bad_model_after_gstreamer_raises_instead_of_aborting(tmp_path) -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "junk.onnx")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "raised:" in done.stdout and "not a loadable ONNX model" in done.stdout
