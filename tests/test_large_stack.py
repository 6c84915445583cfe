"""Large stacks through the command line: bounded memory, streamed output, interruption.

The CLI runs in a subprocess (``python -m napari_unet.cli``) on uncompressed
uint16 TIFF stacks written plane by plane, with a tiny network so the test
stays fast on two CPU cores.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from scipy import ndimage

from napari_unet.core.checkpoint import load_model, save_model
from napari_unet.core.io import open_image
from napari_unet.core.model import UNet
from napari_unet.core.segment import PlaneDone, iter_segment

PLANE = (512, 512)
SMALL, LARGE = 4, 32  # planes
CLI = [sys.executable, "-m", "napari_unet.cli"]
MB = 1024**2


def write_stack(path: Path, n: int, shape=PLANE, seed: int = 0) -> Path:
    """Uncompressed uint16 stack written plane by plane (smooth blobs, so cells appear)."""
    rng = np.random.default_rng(seed)
    with tifffile.TiffWriter(path) as tif:
        for _ in range(n):
            plane = ndimage.gaussian_filter(rng.random(shape, np.float32), 4)
            plane = (plane - plane.min()) / np.ptp(plane) * 4000
            tif.write(plane.astype(np.uint16), contiguous=True, photometric="minisblack")
    return path


def tiny_model(path: Path, calibrate_on: np.ndarray) -> Path:
    """A depth-2, 1-channel-wide U-Net biased so that about 40% of pixels are cells."""
    torch.manual_seed(0)
    net = UNet(base_channels=1, depth=2).eval()
    x = torch.from_numpy(net.normalization(calibrate_on)[None, None])
    with torch.inference_mode():
        logits = net(x[..., :300, :300])[0]
    diff = (logits[1] - logits[0]).flatten()
    with torch.no_grad():
        net.head.bias[1] -= float(torch.quantile(diff, 0.6))
    return save_model(path, net)


@dataclass
class Run:
    returncode: int
    stderr: str
    maxrss: int  # bytes, exact peak (getrusage of the child)
    anon: int  # bytes, peak of RssAnon (polled)
    seconds: float


def run_cli(*args, interrupt_after_plane: bool = False, sig=signal.SIGINT) -> Run:
    """Run the CLI; measure its peak RSS; optionally send ``sig`` once a plane is done.

    In float32, as the in-process reference runs (``auto`` would be bfloat16 in the
    child on a CPU that computes it natively; ``tests/conftest.py``).
    """
    start = time.perf_counter()
    command = [*CLI, *map(str, args), "--precision", "float32"]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE)
    anon, chunks, done = [0], [], threading.Event()

    def poll() -> None:
        while not done.is_set():
            try:
                with open(f"/proc/{proc.pid}/status") as f:
                    for line in f:
                        if line.startswith("RssAnon:"):
                            anon[0] = max(anon[0], int(line.split()[1]) * 1024)
            except (OSError, ValueError):
                pass
            time.sleep(0.005)

    def read() -> None:
        signalled = False
        while chunk := proc.stderr.read1(4096):
            chunks.append(chunk)
            if interrupt_after_plane and not signalled and b"planes=" in b"".join(chunks):
                proc.send_signal(sig)  # the progress bar shows a finished plane
                signalled = True

    threads = [threading.Thread(target=poll), threading.Thread(target=read)]
    for t in threads:
        t.start()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    for t in threads:
        t.join()
    proc.stderr.close()
    return Run(
        proc.returncode,
        b"".join(chunks).decode(errors="replace"),
        usage.ru_maxrss * 1024,
        anon[0],
        time.perf_counter() - start,
    )


def in_memory(model_file: Path, stack: np.ndarray, n_planes: int | None = None):
    """Labels and probabilities of the first planes, all in memory (the reference)."""
    net = load_model(model_file)
    labels, probs = [], []
    planes = [(i,) for i in range(n_planes if n_planes is not None else len(stack))]
    for event in iter_segment(net, stack, planes=planes, device="cpu"):
        if isinstance(event, PlaneDone):
            labels.append(event.labels)
            probs.append(event.probabilities)
    return np.stack(labels), np.stack(probs)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("large")
    small = write_stack(folder / "small.tif", SMALL, seed=1)
    large = write_stack(folder / "large.tif", LARGE, seed=2)
    model = tiny_model(folder / "tiny.pt", tifffile.imread(small, key=0))
    return folder, model, small, large


@pytest.fixture(scope="module")
def streamed(data):
    """Both stacks predicted by the CLI to disk (labels + probabilities)."""
    folder, model, small, large = data
    runs = {}
    # each stack twice: a run's own peak varies by +-15 MB from run to run
    # (allocator, thread pools), so growth is measured from the higher peak of
    # the small stack to the lower one of the large stack
    for name, stack in (("small", small), ("large", large)) * 2:
        run = run_cli(
            "predict",
            model,
            stack,
            folder / f"{name}_labels.tif",
            "--probabilities",
            folder / f"{name}_prob.tif",
            "--device",
            "cpu",
            "--overwrite",
        )
        assert run.returncode == 0, run.stderr
        if name not in runs or (run.anon > runs[name].anon) == (name == "small"):
            runs[name] = run
    return runs


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_stack(data, streamed):
    folder, _, small, large = data
    extra = LARGE - SMALL
    # holding the extra planes and their float32 probabilities would need this much more
    need = extra * PLANE[0] * PLANE[1] * (2 + 2 * 4)
    small_run, large_run = streamed["small"], streamed["large"]
    # private memory is flat: a few MB of allocator noise, not a fraction of the stack
    assert large_run.anon - small_run.anon < 0.15 * need, (small_run, large_run, need)
    # an uncompressed TIFF is read through a memmap: its pages are file-backed and
    # reclaimable, but they count in RSS while mapped; allow for them, nothing else
    mapped = os.path.getsize(large) - os.path.getsize(small)
    if not isinstance(open_image(large), np.memmap):
        mapped = 0
    assert large_run.maxrss - small_run.maxrss < 0.15 * need + mapped, (small_run, large_run)
    # the outputs are complete stacks on disk
    with tifffile.TiffFile(folder / "large_labels.tif") as tif:
        assert tif.series[0].shape == (LARGE, *PLANE) and tif.series[0].dtype == np.uint32
    with tifffile.TiffFile(folder / "large_prob.tif") as tif:
        assert tif.series[0].shape == (LARGE, 2, *PLANE) and tif.series[0].dtype == np.float32


@pytest.mark.slow
def test_streamed_output_equals_in_memory_prediction(data, streamed):
    folder, model, small, _ = data
    labels, probs = in_memory(model, tifffile.imread(small))
    assert labels.max() > SMALL  # cells in every plane, ids unique across planes
    np.testing.assert_array_equal(tifffile.imread(folder / "small_labels.tif"), labels)
    np.testing.assert_allclose(tifffile.imread(folder / "small_prob.tif"), probs, atol=2e-5)
    ids = [set(np.unique(p)) - {0} for p in labels]
    assert all(ids) and all(not (a & b) for a, b in itertools.pairwise(ids))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_keeps_a_valid_partial_output(data, sig):
    from napari_unet.core.io import partial_path

    folder, model, _, large = data
    out, prob = folder / f"cut_labels_{sig.name}.tif", folder / f"cut_prob_{sig.name}.tif"
    earlier = np.full((2, 3), 7, np.uint32)
    tifffile.imwrite(out, earlier)  # a complete earlier result, replaced only when whole
    run = run_cli(
        "predict",
        model,
        large,
        out,
        "--probabilities",
        prob,
        "--device",
        "cpu",
        "--overwrite",
        interrupt_after_plane=True,
        sig=sig,
    )
    assert run.returncode == 130, run.stderr
    match = re.search(r"interrupted after (\d+) of (\d+) planes", run.stderr)
    assert match, run.stderr
    assert f"kept in {partial_path(out)}" in run.stderr and "is untouched" in run.stderr
    np.testing.assert_array_equal(tifffile.imread(out), earlier)
    done, total = int(match[1]), int(match[2])
    assert total == LARGE and 1 <= done < LARGE
    with tifffile.TiffFile(partial_path(out)) as tif:  # a valid TIFF with the full shape
        assert tif.series[0].shape == (LARGE, *PLANE)
        labels = tif.asarray()
    expected_labels, expected_probs = in_memory(model, tifffile.imread(large), done)
    np.testing.assert_array_equal(labels[:done], expected_labels)
    assert not labels[done:].any()
    probs = tifffile.imread(partial_path(prob))
    assert probs.shape == (LARGE, 2, *PLANE)
    np.testing.assert_allclose(probs[:done], expected_probs, atol=2e-5)
    assert not probs[done:].any()
    assert not list(folder.glob(".*tmp*"))  # no temporary files left behind


@pytest.fixture(scope="module")
def truncated_run(data):
    folder, model, _, large = data
    cut = folder / "truncated.tif"
    cut.write_bytes(large.read_bytes()[: large.stat().st_size // 2])
    run = run_cli("predict", model, cut, folder / "never.tif", "--device", "cpu")
    return run, cut, folder / "never.tif"


def test_truncated_tiff_exits_2_with_an_error_line(truncated_run):
    run, cut, output = truncated_run
    assert run.returncode == 2, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("napari-unet predict: error: ") and str(cut) in lines[-1], lines
    assert "Traceback" not in run.stderr
    assert not output.exists() and not list(output.parent.glob(".never*"))


def test_truncated_tiff_error_is_one_line(truncated_run):
    run, _, _ = truncated_run
    assert len([line for line in run.stderr.splitlines() if line.strip()]) == 1, run.stderr


@pytest.mark.filterwarnings("ignore::ResourceWarning")  # the failing read leaks a handle
@pytest.mark.parametrize("fraction", [0.5, 0.95])
def test_truncated_compressed_stack_exits_2(tmp_path, fraction, capsys):
    import gc

    from napari_unet.cli import main

    stack = np.random.default_rng(0).integers(0, 4000, (6, 64, 64), np.uint16)
    whole = tmp_path / "zlib.tif"
    tifffile.imwrite(whole, stack, photometric="minisblack", compression="zlib")
    cut = tmp_path / "cut.tif"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * fraction)])
    torch.manual_seed(0)
    model = save_model(tmp_path / "m.pt", UNet(base_channels=1, depth=2))
    try:
        code = main(
            ["predict", str(model), str(cut), str(tmp_path / "out.tif"), "--device", "cpu"]
        )
    finally:
        gc.collect()  # close what a failed read left open, inside this test
    assert code == 2


#: A plane whose whole-plane segmentation needs ~1 GB more than a 512 x 512 one (~30 B/px).
HUGE = 6000


@pytest.mark.slow
def test_a_plane_larger_than_memory_allows_is_labelled_within_a_tile_budget(data, tmp_path):
    """One 6000 x 6000 plane: private memory stays within 300 MB of a 512 x 512 plane's."""
    _, model, small, _ = data
    huge = tmp_path / "huge.tif"
    plane = tifffile.memmap(huge, shape=(HUGE, HUGE), dtype=np.uint16, photometric="minisblack")
    rng = np.random.default_rng(3)
    for y in range(0, HUGE, 1000):  # written band by band: this process stays small too
        band = ndimage.gaussian_filter(rng.random((1000, HUGE), np.float32), 4)
        plane[y : y + 1000] = ((band - band.min()) / np.ptp(band) * 4000).astype(np.uint16)
    plane.flush()
    del plane
    runs = {}
    for name, image in (("small", small), ("huge", huge)):
        out = tmp_path / f"{name}_labels.tif"
        runs[name] = run_cli("predict", model, image, out, "--device", "cpu", "--overwrite")
        assert runs[name].returncode == 0, runs[name].stderr
    whole_plane = HUGE * HUGE * 30  # plane float32, probabilities, labels, post-processing
    grown = runs["huge"].anon - runs["small"].anon
    assert grown < 300 * 2**20 < 0.3 * whole_plane, (runs["small"], runs["huge"])
    # a complete labelling with ids 1..n (equality with whole-plane labelling is tested
    # on small planes in tests/core/test_large_plane.py and tests/test_cli.py)
    labels = np.asarray(open_image(tmp_path / "huge_labels.tif"))
    assert labels.shape == (HUGE, HUGE) and labels.dtype == np.uint32
    ids = np.unique(labels)
    assert ids[0] == 0 and len(ids) > 100 and ids[-1] == len(ids) - 1
    assert f"{len(ids) - 1} cells in 1 plane(s)" in runs["huge"].stderr
