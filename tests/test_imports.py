import subprocess
import sys


def test_core_and_cli_import_no_gui():
    code = (
        "import sys, napari_unet, napari_unet.core, napari_unet.cli\n"
        "from napari_unet.core import UNet, predict_tiled, unet_weight_map\n"
        "import napari_unet.core.segment, napari_unet.core.io\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'napari', 'magicgui', 'superqt', "
        "'vispy')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_package_root_is_light():
    code = (
        "import sys, napari_unet, napari_unet.core\n"
        "assert 'torch' not in sys.modules, 'importing napari_unet must not import torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_core_export_resolves():
    import napari_unet.core as core

    for name in core.__all__:
        assert getattr(core, name) is not None, name
