"""dask ``--preload`` for the test clusters' workers: ``"auto"`` precision is float32 there.

The same rule as the test process's (``conftest._float32_cpu``), so a cluster's
results can be compared with an in-process run on any CPU.
"""

from napari_unet.core import device

device.cpu_has_native_bf16 = lambda: False
