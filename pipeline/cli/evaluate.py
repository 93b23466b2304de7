"""``selfreid eval-tracks``: cross-camera identity quality of one model on your own labelled clip.

The work lives in :mod:`selfreid.pipeline.evaluation.tracks` (benchmark M1 calls the same code);
this module parses options, shows progress and turns user mistakes into one-line errors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from selfreid.pipeline.cli.common import ConfigOption, console, fail, load_or_fail

if TYPE_CHECKING:
    from selfreid.plugins.matchers.cross_camera import CrossCameraMatcher

__all__ = ["eval_tracks_command", "parse_frames", "resolve_model"]


def parse_frames(text: str) -> tuple[int, int]:
    """``"1-400"`` -> ``(1, 400)``; anything else is a one-line error."""
    first, sep, last = text.partition("-")
    if not sep or not first.strip().isdigit() or not last.strip().isdigit() or int(first) > int(last) or int(first) < 1:
        fail(f"--frames {text!r}: expected FIRST-LAST with 1 <= FIRST <= LAST, e.g. 1-400")
    return int(first), int(last)


def _matcher_settings(config: Path | None) -> CrossCameraMatcher.Settings:
    """The site's ``cross_camera`` matcher settings (the product defaults without ``--config``); only
    reads the config, so no ``data_dir`` is created."""
    from pydantic import ValidationError

    from selfreid.plugins.matchers.cross_camera import CrossCameraMatcher

    if config is None:
        return CrossCameraMatcher.Settings()
    cfg = load_or_fail(config, data_dir=False)
    if cfg.matcher.matcher.plugin != "cross_camera":
        fail(f"{config}: matcher.matcher.plugin is {cfg.matcher.matcher.plugin!r}; eval-tracks scores the cross_camera matcher")
    try:
        return CrossCameraMatcher.Settings(**cfg.matcher.matcher.params)
    except ValidationError as exc:
        fail(f"{config}: matcher.matcher.params: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}")


def resolve_model(text: str, config: Path | None) -> Path:
    """``--model``: an ONNX file, or a version of the site's registry (``2``, ``v2``) under ``--config``."""
    from selfreid.pipeline.training.registry import RegistryError, open_registry

    path = Path(text)
    if path.is_file():
        return path
    if path.suffix.lower() == ".onnx" or "/" in text:
        fail(f"--model {text}: no such ONNX file")
    try:
        return Path(open_registry(load_or_fail(config), None).get(text).onnx)
    except RegistryError as exc:
        fail(f"--model {text}: neither an ONNX file nor a registered version ({exc})")


def _print_table(result: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"{result['model_version']}: cross-camera identities, {result['split']} split, "
                        f"frames {result['frames'][0]}-{result['frames'][1]}, {result['crops']} crops")
    table.add_column("association")
    for name in ("IDF1", "IDP", "IDR", "identities found / true", "threshold"):
        table.add_column(name, justify="right")
    table.add_row("product", f"{result['idf1']:.3f}", f"{result['idp']:.3f}", f"{result['idr']:.3f}",
                  f"{result['identities_found']} / {result['identities_true']}", f"{result['threshold']:.3f}")
    table.add_row("oracle threshold", f"{result['oracle_idf1']:.3f}", "", "", "",
                  f"{result['oracle_threshold']:.3f}")
    table.add_row("no association", f"{result['baseline_idf1']:.3f}", "", "", "", "")
    console.print(table)
    console.print(f"threshold from: {result['calibration_source']}; product is {result['gap']:.3f} IDF1 below the oracle")


def eval_tracks_command(
    model: Annotated[str, typer.Option("--model", help="A registered version of the site (2, v2; the registry "
                                                       "of --config) or an exported .onnx file; its stored "
                                                       "calibration is used.")],
    gt: Annotated[Path, typer.Option("--gt", help="MOT-format ground truth: frame,id,x,y,w,h,considered,...")],
    video: Annotated[Path, typer.Option("--video", help="The video the ground truth labels (frame 1 = first frame).")],
    frames: Annotated[str | None, typer.Option("--frames", help="FIRST-LAST frames to score, e.g. 1-400; "
                                                                    "rows outside are ignored (default: all).")] = None,
    split: Annotated[Literal["time", "halves"], typer.Option(
        "--split", help="Virtual cameras from one view: 'time' (first/second half of the frames) or 'halves' "
                        "(left/right half of the image).")] = "time",
    every_k: Annotated[int, typer.Option("--every-k", min=1, help="Embed every k-th frame's boxes.")] = 4,
    fps: Annotated[float, typer.Option("--fps", min=0.1, help="Frame rate of the clip (vtest.avi: 7).")] = 25.0,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full result as JSON on stdout.")] = False,
) -> None:
    """Score cross-camera IDF1 (IDF1, IDP, IDR, identities found/true) of one model under exactly the
    association the product deploys with it: its stored label-free calibration (or one fitted on
    the clip's unlabelled crops when the file has none), cannot-links, the matcher settings of
    --config. For comparison only, also the IDF1 at the best threshold on the scored data (oracle).

    Example: selfreid eval-tracks --model .selfreid/models/v2.onnx --gt gt.txt --video vtest.avi --frames 1-400 --fps 7
    """
    from selfreid.pipeline.evaluation.tracks import TracksError, evaluate_tracks
    from selfreid.pipeline.runtime.progress import step_progress

    onnx = resolve_model(model, config)
    settings = _matcher_settings(config)
    span = parse_frames(frames) if frames is not None else None
    with step_progress(console) as advance:
        try:
            result = evaluate_tracks(onnx, gt, video, frames=span, split=split, every_k=every_k, fps=fps,
                                     settings=settings, progress=advance)
        except TracksError as exc:
            fail(str(exc))
    if as_json:
        typer.echo(json.dumps(result, indent=1))
    else:
        _print_table(result)
