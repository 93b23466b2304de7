"""Embedder, matcher and the HTTP API."""

from __future__ import annotations

from pydantic import Field, SecretStr

from selfreid.pipeline.config.base import PluginChoice, Section

__all__ = ["EmbedderConfig", "MatcherConfig", "ApiConfig"]


class EmbedderConfig(PluginChoice):
    """``plugin`` (default ``onnx``) and its ``params`` (``model``: a fixed ONNX file instead of the
    registry's production model; ``device``: auto/cpu/cuda:N; ``threads``)."""

    plugin: str = "onnx"
    batch_size: int = Field(32, ge=1, description="Crops per inference batch (bigger = faster per crop, more latency).")
    max_wait_ms: int = Field(50, ge=0, description="Dynamic batching: wait at most this long to fill a batch.")
    stream_maxlen: int = Field(
        50_000, ge=100, description="Embeddings kept in Redis for the matcher (~20 KB each with the crop)."
    )


class IndexChoice(PluginChoice):
    plugin: str = Field("faiss", description="Index plugin; params: exact_max, nlist, nprobe, device, ...")


class MatcherChoice(PluginChoice):
    plugin: str = Field("cross_camera", description="Matcher plugin; params: threshold, min_crops, window_s, transitions, ...")


class MatcherConfig(Section):
    """``index``: the nearest-neighbour index plugin (``faiss``: exact up to ``exact_max``, then IVF);
    ``matcher``: the identity matcher (``cross_camera``: threshold, window, camera transitions, ...)."""

    index: IndexChoice = IndexChoice()
    matcher: MatcherChoice = MatcherChoice()
    batch_size: int = Field(256, ge=1, description="Embeddings consumed per matcher step.")
    prune_every_s: float = Field(
        60.0, gt=0, description="How often (wall time) the gallery is pruned by age and the privacy retention "
        "(pool.params.max_age_hours) is enforced on crops, embeddings, gallery and events.",
    )


class ApiConfig(Section):
    host: str = Field(
        "127.0.0.1", description="Bind address; 0.0.0.0 exposes the API to the network (set a token, or it warns)."
    )
    token: SecretStr | None = Field(
        None,
        min_length=16,
        description="Bearer token (16+ characters: `openssl rand -hex 24`) that every endpoint but /health requires "
        "(Authorization: Bearer TOKEN; a browser opens /report?token=TOKEN once and keeps a cookie). "
        "None = no authentication. Env SELFREID_API_TOKEN.",
    )
    port: int = Field(8000, ge=1, le=65535)
    top_k: int = Field(5, ge=1, le=100, description="Identities returned per person in a search.")
    min_score: float = Field(
        0.75, ge=-1, le=1,
        description="Cosine a search hit needs. One query crop scores lower against a tracklet than two tracklets "
        "do, so this sits below the matcher's threshold; model-dependent (0.75 suits the ImageNet baseline).",
    )
    max_upload_mb: float = Field(10.0, gt=0, description="Uploaded query images larger than this are refused.")
    max_image_pixels: int = Field(
        50_000_000, ge=1, description="Query images (API and `selfreid search`) declaring more pixels than this are "
        "refused from their header, before decoding (a small file can declare a huge image; 50 MP = 150 MB decoded).",
    )
