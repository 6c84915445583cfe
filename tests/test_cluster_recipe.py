"""docs/cluster.md, run as written: `dask scheduler`, two `dask worker`s, the page's script.

The scheduler and the workers are the command-line programs, started here as
separate processes (not a ``LocalCluster``); the script is the page's
``segment_on_cluster.py`` code block, run as its own client process on a small
zarr stack. Its zarr outputs must equal the in-process segmentation of the
same planes, and both workers must have run the network.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zarr

distributed = pytest.importorskip("distributed")

DOC = Path(__file__).resolve().parents[1] / "docs" / "cluster.md"
SCRIPT = "segment_on_cluster.py"
FLOAT32_WORKERS = Path(__file__).resolve().parent / "float32_workers.py"
#: Seconds allowed for a process to start, the workers to join, the script to run.
START_TIMEOUT = 120
RUN_TIMEOUT = 300
BLOCK = 160
N_BLOCKS = 3 * 2 * 2  # 3 planes of 300 x 300 pixels, 2 x 2 blocks of 160 each


def _dask_command(sub: str) -> list[str]:
    """``dask scheduler`` / ``dask worker``: the venv's entry point, else the module."""
    exe = shutil.which("dask", path=str(Path(sys.executable).parent))
    if exe:
        return [exe, sub]
    return [sys.executable, "-m", f"distributed.cli.dask_{sub}"]


def _tail(path: Path, n: int = 40) -> str:
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return f"--- {path.name} ---\n" + "\n".join(lines[-n:])


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM (dask shuts down cleanly), then kill the process group if it lingers."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            if os.name == "posix":
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: the nanny's worker too
            else:  # pragma: no cover
                proc.kill()
            proc.wait(timeout=30)


def _environment() -> dict[str, str]:
    """This environment, where the processes import the napari_unet these tests import."""
    import napari_unet

    env = dict(os.environ)
    source = str(Path(napari_unet.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    return env


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[str, list[Path]]]:
    """A `dask scheduler` and two `dask worker` processes on this machine; their address."""
    env = _environment()
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # a shell's would win over dask's
        env.pop(name, None)
    logs: list[Path] = []
    procs: list[subprocess.Popen] = []

    def start(name: str, args: list[str]) -> subprocess.Popen:
        log = tmp_path / f"{name}.log"
        logs.append(log)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=tmp_path,
                start_new_session=os.name == "posix",
            )
        procs.append(proc)
        return proc

    scheduler_file = tmp_path / "scheduler.json"
    try:
        scheduler = start(
            "scheduler",
            [
                *_dask_command("scheduler"),
                "--host", "127.0.0.1",
                "--port", "0",  # a free port, read back from the scheduler file
                "--no-dashboard",
                "--scheduler-file", str(scheduler_file),
                "--idle-timeout", "600s",  # ends itself should this test die unseen
            ],
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        address = None
        while address is None:
            if scheduler.poll() is not None:
                pytest.fail("dask scheduler exited\n" + _tail(logs[0]))
            if time.monotonic() > deadline:
                pytest.fail("dask scheduler wrote no scheduler file\n" + _tail(logs[0]))
            try:
                address = json.loads(scheduler_file.read_text())["address"]
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                time.sleep(0.1)  # polling, bounded by the deadline
        for i in (1, 2):
            start(
                f"worker-{i}",
                [
                    *_dask_command("worker"),
                    address,
                    "--nworkers", "1",
                    "--nthreads", "1",
                    "--memory-limit", "2GiB",
                    "--no-dashboard",
                    "--host", "127.0.0.1",
                    "--name", f"node{i}",
                    "--local-directory", str(tmp_path / f"worker-{i}"),
                    "--death-timeout", "60s",  # ends itself should the scheduler vanish
                    "--preload", str(FLOAT32_WORKERS),
                ],
            )  # fmt: skip
        yield address, logs
    finally:
        _stop(procs[1:])  # the workers first: they leave the scheduler cleanly
        _stop(procs[:1])


def _script(tmp_path: Path) -> Path:
    """The page's script, as written (the code block that starts with its file name)."""
    blocks = re.findall(r"```python\n(# " + re.escape(SCRIPT) + r".*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 1, f"one `# {SCRIPT}` code block expected in {DOC.name}"
    path = tmp_path / SCRIPT
    path.write_text(blocks[0])
    return path


def network_blocks(client) -> dict[str, int]:
    """Blocks each worker process has run the network on (predict_dask's model cache).

    Every block looks its model up in ``_load_cached`` once: a miss the first
    time in a process, a hit after.
    """
    from napari_unet.core.distributed import _load_cached

    # (a function of an importable module: this test module is not, on the workers)
    infos = client.run(_load_cached.cache_info)
    return {worker: info.hits + info.misses for worker, info in infos.items()}


@pytest.mark.slow
def test_recipe_on_cli_scheduler_and_two_workers(cluster, tmp_path):
    import torch

    from napari_unet.core import PlaneDone, SegmentConfig, iter_segment, load_model
    from napari_unet.core.distributed import _load_cached
    from synthetic import image_of, touching_disks

    address, logs = cluster
    stack = (
        np.stack(
            [
                image_of(touching_disks((300, 300), n=40, radius=(8, 14), seed=s), seed=s)
                for s in range(3)
            ]
        ).astype(np.uint16)
        * 16
    )
    shared = tmp_path / "shared"
    src = zarr.create_array(
        str(shared / "data" / "stack.zarr"), shape=stack.shape, chunks=(1, 160, 160), dtype="u2"
    )
    src[:] = stack
    (shared / "tmp").mkdir()
    script = _script(tmp_path)

    with distributed.Client(address, timeout="60s") as client:
        try:
            client.wait_for_workers(2, timeout=START_TIMEOUT)
        except TimeoutError:
            pytest.fail("the workers did not join\n" + "\n".join(map(_tail, logs)))
        # the nanny starts workers with OMP/MKL_NUM_THREADS=1: one torch thread each
        assert set(client.run(torch.get_num_threads).values()) == {1}
        assert set(network_blocks(client).values()) == {0}
        client.get_task_stream()  # the scheduler records the task stream from now on

        args = [str(shared / "data" / "stack.zarr"), str(shared / "results")]
        options = ["--scratch", str(shared / "tmp"), "--block-size", str(BLOCK)]
        # its own process, as a user runs it; -W error: the recipe runs without warnings
        run = subprocess.run(
            [sys.executable, "-W", "error", str(script), address, *args, *options],
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            cwd=tmp_path,
            env=_environment(),
        )
        report = f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}\n" + "\n".join(map(_tail, logs))
        assert run.returncode == 0, report

        # the network ran on the workers, on both, every block once (none ran in the
        # script's process); each worker process loaded the model file once
        blocks = network_blocks(client)
        assert len(blocks) == 2 and min(blocks.values()) >= 1, (blocks, report)
        assert sum(blocks.values()) == N_BLOCKS, (blocks, report)
        assert {i.currsize for i in client.run(_load_cached.cache_info).values()} == {1}
        # ... and so did the labelling tasks (the task stream: what ran where)
        ran_on: dict[str, set[str]] = {}
        for task in client.get_task_stream():
            key = task["key"][0] if isinstance(task["key"], tuple) else task["key"]
            ran_on.setdefault(str(key).rsplit("-", 1)[0], set()).add(task["worker"])
        assert {"_summarise", "_grown_block"} <= set(ran_on), sorted(ran_on)
        assert set().union(*ran_on.values()) == set(blocks), ran_on

    # the outputs equal the in-process segmentation (what `napari-unet predict` does)
    model = load_model("nuclei")
    events = iter_segment(model, stack, device="cpu", **SegmentConfig().segment_kwargs(model))
    done = [e for e in events if isinstance(e, PlaneDone)]
    prob = zarr.open_array(str(shared / "results" / "prob.zarr"), mode="r")
    labels = zarr.open_array(str(shared / "results" / "labels.zarr"), mode="r")
    assert prob.shape == (3, 2, 300, 300) and labels.shape == stack.shape
    np.testing.assert_allclose(prob[:], np.stack([e.probabilities for e in done]), atol=2e-5)
    got, want = labels[:], np.stack([e.labels for e in done])
    assert np.array_equal(got > 0, want > 0)
    # the same cells (ids may be permuted), ids unique across the stack
    pairs = np.unique(np.stack([got[got > 0], want[want > 0]]), axis=1)
    n_cells = int(want.max())
    assert n_cells > 30 and pairs.shape[1] == n_cells == len(np.unique(got[got > 0]))
    assert f"{n_cells} cells" in run.stdout
    assert not any((shared / "tmp").iterdir())  # label_dask removed its scratch
