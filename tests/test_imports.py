import importlib
import subprocess
import sys

import pytest


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


def _core_modules() -> list[str]:
    import pkgutil

    import napari_unet.core as core

    return sorted(info.name for info in pkgutil.iter_modules(core.__path__))


@pytest.mark.parametrize("name", _core_modules())
def test_core_module_declares_its_public_names(name):
    """Each core module has an ``__all__`` that lists real names, lazy exports included."""
    import napari_unet.core as core

    module = importlib.import_module(f"napari_unet.core.{name}")
    public = getattr(module, "__all__", None)
    assert public is not None, f"napari_unet.core.{name} defines no __all__"
    assert all(isinstance(n, str) for n in public), public
    assert len(set(public)) == len(public), f"duplicates in {name}.__all__"
    missing = [n for n in public if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what the module lacks: {missing}"
    exported = sorted(n for n, m in core._EXPORTS.items() if m == name)
    unlisted = [n for n in exported if n not in public]
    assert not unlisted, f"napari_unet.core exports {unlisted} from {name}, not in its __all__"
