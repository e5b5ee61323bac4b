"""What a batch task sets up on the worker that runs it (Dask workers in particular)."""

from __future__ import annotations

import os

from i2score.data.redact import install_log_redaction

#: Torch CPU threads of a worker process. Dask starts workers with ``OMP_NUM_THREADS=1`` before
#: Python runs, so the thread count is set from this variable when a batch starts instead.
TORCH_THREADS_ENV = "I2S_TORCH_THREADS"


def prepare_worker() -> int | None:
    """Apply :data:`TORCH_THREADS_ENV` and return the GPU index this worker should use: worker i
    of a Dask ``LocalCluster`` on a machine with n GPUs uses GPU ``i mod n``. None outside a
    Dask worker, or with at most one GPU visible (``local-cuda`` workers see one each)."""
    import torch

    # A Dask worker process imports no flow module: its log records are redacted from here on.
    install_log_redaction()
    threads = os.environ.get(TORCH_THREADS_ENV)
    if threads and threads.isdigit() and int(threads) != torch.get_num_threads():
        torch.set_num_threads(int(threads))
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n <= 1:
        return None
    name = worker.name
    # LocalCluster names its workers 0..N-1; other names (dask worker --name) hash to a GPU.
    index = name if isinstance(name, int) else int.from_bytes(str(name).encode()[-4:], "big")
    return index % n
