import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from napari_unet.cli import main
from napari_unet.core.checkpoint import load_model
from napari_unet.core.tasks import detect_task, model_task, task_config
from napari_unet.core.training import TrainConfig
from synthetic import image_of, membrane_mask, touching_disks


def test_detect_task_from_the_labels():
    disks = touching_disks()
    assert detect_task(disks) == detect_task([disks])  # one image or a list
    assert detect_task(disks).task == "cells" and detect_task(disks).certain
    assert "instance ids" in detect_task(disks).reason
    nuclei_mask = (disks > 0).astype(np.uint8)
    assert detect_task(nuclei_mask).task == "cells" and detect_task(nuclei_mask).certain
    membranes = detect_task([membrane_mask(), membrane_mask(spacing=16)])
    assert membranes.task == "membranes" and membranes.certain
    assert "thin background" in membranes.reason


def test_ambiguous_labels_say_so():
    # mostly foreground, but with a thick background (no thin network)
    half = np.zeros((96, 96), np.uint8)
    half[:, :70] = 1
    choice = detect_task(half)
    assert choice.task == "cells" and not choice.certain and "neither" in choice.reason
    empty = detect_task(np.zeros((32, 32), np.uint8))
    assert not empty.certain and "empty" in empty.reason


def test_detection_looks_only_at_the_annotated_region():
    labels = membrane_mask()
    known = np.zeros(labels.shape, bool)
    known[:48, :48] = True
    labels[~known] = 0  # unknown pixels are 0 and must not count as background
    assert detect_task(labels).task != "membranes"
    assert detect_task([labels], [known]).task == "membranes"


def test_task_config_presets_and_overrides():
    cells = task_config("cells", 5)
    assert cells == TrainConfig(task="cells")  # the cells preset is TrainConfig's defaults
    two = task_config("membranes", 2)
    assert (two.weighting, two.patch_size, two.batch_size, two.validation) == (
        "none",
        572,
        1,
        "none",
    )
    assert task_config("membranes", 3).validation == "auto"
    given = task_config("membranes", 2, patch_size=380, validation="auto", steps=None)
    assert given.patch_size == 380 and given.validation == "auto"
    assert given.steps == TrainConfig().steps  # None = not set
    with pytest.raises(ValueError, match="unknown task"):
        task_config("tissue", 1)
    with pytest.raises(TypeError, match="unknown TrainConfig fields"):
        task_config("cells", 1, colour="red")


def test_membranes_train_and_predict_a_mask_end_to_end(tmp_path, capsys):
    mask = membrane_mask()
    image = image_of(mask)
    for name, data in {"img.tif": image, "mask.tif": mask}.items():
        tifffile.imwrite(tmp_path / name, data)
    model = tmp_path / "em.pt"
    argv = ["train", "--image", tmp_path / "img.tif", "--labels", tmp_path / "mask.tif"]
    short = ["--steps", "2", "--patch-size", "188", "--device", "cpu", "--out", model]
    assert main([str(a) for a in [*argv, *short]]) == 0
    err = capsys.readouterr().err
    assert "task: membranes (from the labels" in err and "a new model (task membranes)" in err
    net = load_model(model)
    assert model_task(net) == "membranes"
    assert net.metadata["training"]["config"]["weighting"] == "none"
    assert net.metadata["training"]["n_validation"] == 0  # one image: no band

    out, regions = tmp_path / "out.tif", tmp_path / "regions.tif"
    predict = ["predict", model, tmp_path / "img.tif"]
    assert main([str(a) for a in [*predict, out, "--device", "cpu"]]) == 0
    assert "binary mask" in capsys.readouterr().err
    written = tifffile.imread(out)
    assert written.dtype == np.uint8 and set(np.unique(written)) <= {0, 1}
    assert main([str(a) for a in [*predict, regions, "--regions", "--device", "cpu"]]) == 0
    labelled = tifffile.imread(regions)
    assert labelled.dtype == np.uint32
    # the regions are the mask's connected components (the smallest removed)
    components = ndi.label(written)[0]
    sizes = np.bincount(components.ravel())[1:]
    assert labelled.max() == (sizes >= 16).sum()
    assert ((labelled > 0) <= (written > 0)).all()


def test_task_flag_overrides_the_detection(tmp_path, capsys):
    disks = touching_disks()
    tifffile.imwrite(tmp_path / "img.tif", image_of(disks))
    tifffile.imwrite(tmp_path / "lab.tif", disks)
    argv = ["train", "--image", tmp_path / "img.tif", "--labels", tmp_path / "lab.tif"]
    short = ["--steps", "1", "--patch-size", "188", "--device", "cpu"]
    out = tmp_path / "m.pt"
    assert main([str(a) for a in [*argv, *short, "--out", out, "--task", "membranes"]]) == 0
    assert "task: membranes (--task)" in capsys.readouterr().err
    assert model_task(load_model(out)) == "membranes"
    with pytest.raises(SystemExit):
        main([str(a) for a in [*argv, "--out", out, "--task", "tissue"]])
    assert "invalid choice" in capsys.readouterr().err


def test_models_from_before_tasks_are_cells():
    from napari_unet.core.pretrained import load_pretrained

    assert model_task(load_pretrained("nuclei")) == "cells"
