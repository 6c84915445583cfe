"""``napari-unet`` command line: the plugin's jobs without a GUI.

Every job drains the same core generators as the widgets, shows a progress
bar on stderr and exits with status 2 and a one-line message on bad input.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from tqdm import tqdm

import napari_unet

logger = logging.getLogger("napari_unet")

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _progress(total: int, desc: str, unit: str) -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, delay=0.5)


# ---------------------------------------------------------------------------
# predict


def _cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from napari_unet.core.checkpoint import load_model
    from napari_unet.core.io import PlaneWriter, check_output_path, open_image
    from napari_unet.core.segment import PlaneDone, iter_segment
    from napari_unet.core.tiling import as_channels_first

    check_output_path(args.output, overwrite=args.overwrite)
    if args.probabilities:
        check_output_path(args.probabilities, overwrite=args.overwrite)
        if Path(args.probabilities).resolve() == Path(args.output).resolve():
            raise ValueError("--probabilities must differ from OUTPUT")
    model = load_model(args.model)
    image = open_image(args.input)
    _, lead, _ = as_channels_first(image, model.in_channels)
    shape = (*lead, *image.shape[-2:])
    n_planes = int(np.prod(lead))
    with ExitStack() as stack:
        labels_out = stack.enter_context(
            PlaneWriter(args.output, shape, np.uint32, overwrite=args.overwrite)
        )
        prob_out = None
        if args.probabilities:
            prob_out = stack.enter_context(
                PlaneWriter(
                    args.probabilities, (*lead, model.n_classes, *shape[-2:]), np.float32,
                    plane_ndim=3, overwrite=args.overwrite,
                )
            )
        bar = stack.enter_context(_progress(0, "predict", "tile"))
        jobs = iter_segment(
            model, image, tile_size=args.tile_size, batch_size=args.batch_size,
            device=args.device, threshold=args.threshold, min_size=args.min_size,
            split=args.split,
        )
        cells = 0
        try:
            for event in jobs:
                if isinstance(event, PlaneDone):
                    labels_out.write(event.labels)
                    if prob_out is not None:
                        prob_out.write(event.probabilities)
                    cells += event.n_objects
                    bar.set_postfix(planes=f"{event.plane + 1}/{n_planes}", cells=cells)
                    continue
                if event.message:
                    bar.write(f"napari-unet: {event.message}", file=sys.stderr)
                bar.total = event.total
                bar.update(event.done - bar.n)
        except KeyboardInterrupt:
            written = labels_out.written
            labels_out.close(keep=True)
            if prob_out is not None:
                prob_out.close(keep=True)
            bar.close()
            print(
                f"napari-unet: interrupted after {written} of {n_planes} planes; partial "
                f"output kept in {args.output} (remaining planes are 0)",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
    print(f"napari-unet: {cells} cells in {n_planes} plane(s) -> {args.output}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------
# weightmap


def _cmd_weightmap(args: argparse.Namespace) -> int:
    import numpy as np

    from napari_unet.core.io import PlaneWriter, check_output_path, open_image
    from napari_unet.core.weightmap import unet_weight_map

    check_output_path(args.output, overwrite=args.overwrite)
    labels = open_image(args.labels)
    if labels.ndim < 2:
        raise ValueError(f"LABELS must be at least 2D, got shape {labels.shape}")
    lead = tuple(labels.shape[:-2])
    with (
        PlaneWriter(args.output, labels.shape, np.float32, overwrite=args.overwrite) as out,
        _progress(int(np.prod(lead)), "weightmap", "plane") as bar,
    ):
        for index in np.ndindex(*lead):
            plane = np.asarray(labels[index])
            out.write(unet_weight_map(plane, w0=args.w0, sigma=args.sigma))
            bar.update()
    print(f"napari-unet: weight map -> {args.output}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------
# parser


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``napari-unet`` command."""
    parser = argparse.ArgumentParser(
        prog="napari-unet",
        description="Few-shot U-Net cell segmentation (Ronneberger et al. 2015).",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=napari_unet.__version__)
    parser.add_argument(
        "--traceback", action="store_true", help="show full tracebacks instead of one-line errors"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "predict",
        help="segment a 2D image or a stack with a trained model",
        description="Segment INPUT (2D image or stack; TIFF or zarr) plane by plane with "
        "overlap-tile inference and write instance labels (uint32) to OUTPUT.",
        formatter_class=_Formatter,
    )
    p.add_argument("model", metavar="MODEL", help="model file (.pt) from `napari-unet train`")
    p.add_argument("input", metavar="INPUT", help="image: .tif/.tiff or .zarr")
    p.add_argument("output", metavar="OUTPUT", help="labels: .tif/.tiff or .zarr")
    p.add_argument("--probabilities", metavar="PROB", help="also write class probabilities here")
    p.add_argument("--tile-size", type=int, help="input tile edge in pixels (default: from memory)")
    p.add_argument("--batch-size", type=int, help="tiles per forward pass (default: auto)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--threshold", type=float, default=0.5, help="foreground probability cut")
    p.add_argument("--min-size", type=int, default=16, help="remove smaller objects (pixels)")
    p.add_argument("--split", action="store_true", help="watershed-split touching cells")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.set_defaults(func=_cmd_predict)

    w = sub.add_parser(
        "weightmap",
        help="compute the U-Net paper's weight map of instance labels",
        description="w(x) = w_c(x) + w0 exp(-(d1 + d2)^2 / (2 sigma^2)), plane by plane.",
        formatter_class=_Formatter,
    )
    w.add_argument("labels", metavar="LABELS", help="instance labels (.tif or .zarr), 0 = background")
    w.add_argument("output", metavar="OUT", help="weight map (.tif or .zarr), float32")
    w.add_argument("--w0", type=float, default=10.0, help="border weight")
    w.add_argument("--sigma", type=float, default=5.0, help="border width (pixels)")
    w.add_argument("--overwrite", action="store_true", help="replace an existing output")
    w.set_defaults(func=_cmd_weightmap)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``napari-unet`` command; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="napari-unet: %(message)s")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("napari-unet: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, OSError) as err:
        if args.traceback:
            raise
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"napari-unet {args.command}: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
