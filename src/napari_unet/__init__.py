"""napari-unet: few-shot U-Net segmentation for napari.

The package root is import-light: it imports neither torch nor Qt.
The compute API lives in :mod:`napari_unet.core`.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
