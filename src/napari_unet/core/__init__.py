"""Pure compute for napari-unet: no Qt, napari or magicgui imports.

Names are re-exported lazily, so ``import napari_unet.core`` stays cheap and
torch is only imported when a torch-backed name is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "export_bioimageio": "bioimageio",
    "check_package": "bioimageio",
    "UNet": "model",
    "UNetConfig": "model",
    "valid_input_size": "model",
    "output_size": "model",
    "save_model": "checkpoint",
    "load_model": "checkpoint",
    "ModelFileError": "checkpoint",
    "suggested_threshold": "checkpoint",
    "normalize": "preprocess",
    "Normalization": "preprocess",
    "select_device": "device",
    "predict_tiled": "tiling",
    "iter_predict_tiled": "tiling",
    "TileProgress": "tiling",
    "probabilities_to_labels": "postprocess",
    "close_gaps": "postprocess",
    "unet_weight_map": "weightmap",
    "elastic_deform": "augment",
    "augment_sample": "augment",
    "weighted_cross_entropy": "losses",
    "iter_train": "training",
    "train": "training",
    "TrainConfig": "train_config",
    "TrainProgress": "training",
    "TrainResult": "training",
    "SegmentConfig": "segment_config",
    "instance_scores": "metrics",
    "seg_score": "metrics",
    "pretrained_models": "pretrained",
    "load_pretrained": "pretrained",
    "detect_task": "tasks",
    "task_config": "tasks",
    "foreground_iou": "metrics",
    "predict_dask": "distributed",
    "open_image": "io",
    "iter_segment": "segment",
    "PlaneDone": "segment",
    "TestTimeAugmentation": "predictor",
    "Predictor": "predictor",
    "NetworkPredictor": "predictor",
    "run_tiles": "tiling",
    "iter_segment_large": "large_plane",
    "label_dask": "large_plane",
    "label_blocks": "blockwise",
    "label_blocks_dask": "blockwise",
    "PlaneLinker": "linking",
    "link_planes": "linking",
    "training_crops": "annotations",
    "Rectangle": "annotations",
    "Annotation": "annotations",
    "LivePreview": "preview",
    "PreviewUpdate": "preview",
    "uncertainty_map": "uncertainty",
    "next_region": "uncertainty",
    "SuggestedRegion": "uncertainty",
    "AnnotationSummary": "versions",
    "ModelVersion": "versions",
    "UnknownVersionError": "versions",
    "VersionError": "versions",
    "VersionStore": "versions",
    "summarize_annotations": "versions",
    "training_scores": "versions",
    "versions_folder": "versions",
    "HeldOut": "held_out",
    "HeldOutScores": "held_out",
    "held_out_set": "held_out",
    "score_versions": "held_out",
    "TrainOutcome": "train_versions",
    "VersionPlan": "train_versions",
    "train_and_record": "train_versions",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover
    from napari_unet.core.annotations import Annotation, Rectangle, training_crops
    from napari_unet.core.augment import augment_sample, elastic_deform
    from napari_unet.core.bioimageio import check_package, export_bioimageio
    from napari_unet.core.blockwise import label_blocks, label_blocks_dask
    from napari_unet.core.checkpoint import (
        ModelFileError,
        load_model,
        save_model,
        suggested_threshold,
    )
    from napari_unet.core.device import select_device
    from napari_unet.core.distributed import predict_dask
    from napari_unet.core.held_out import HeldOut, HeldOutScores, held_out_set, score_versions
    from napari_unet.core.io import open_image
    from napari_unet.core.large_plane import iter_segment_large, label_dask
    from napari_unet.core.linking import PlaneLinker, link_planes
    from napari_unet.core.losses import weighted_cross_entropy
    from napari_unet.core.metrics import foreground_iou, instance_scores, seg_score
    from napari_unet.core.model import UNet, UNetConfig, output_size, valid_input_size
    from napari_unet.core.postprocess import close_gaps, probabilities_to_labels
    from napari_unet.core.predictor import NetworkPredictor, Predictor, TestTimeAugmentation
    from napari_unet.core.preprocess import Normalization, normalize
    from napari_unet.core.pretrained import load_pretrained, pretrained_models
    from napari_unet.core.preview import LivePreview, PreviewUpdate
    from napari_unet.core.segment import PlaneDone, iter_segment
    from napari_unet.core.segment_config import SegmentConfig
    from napari_unet.core.tasks import detect_task, task_config
    from napari_unet.core.tiling import TileProgress, iter_predict_tiled, predict_tiled, run_tiles
    from napari_unet.core.train_config import TrainConfig
    from napari_unet.core.train_versions import TrainOutcome, VersionPlan, train_and_record
    from napari_unet.core.training import TrainProgress, TrainResult, iter_train, train
    from napari_unet.core.uncertainty import SuggestedRegion, next_region, uncertainty_map
    from napari_unet.core.versions import (
        AnnotationSummary,
        ModelVersion,
        UnknownVersionError,
        VersionError,
        VersionStore,
        summarize_annotations,
        training_scores,
        versions_folder,
    )
    from napari_unet.core.weightmap import unet_weight_map
