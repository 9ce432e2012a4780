"""Run ``reben train`` under torchrun with observation or a fault injected on one process (for the tests).

Usage (one process per rank, started by ``torch.distributed.run``)::

    ddp_faults.py MODE RECORD_DIR -- <reben train arguments>

MODE ``bn``: record, on every process, the BatchNorm buffers of the model at every validation
(the sum of every buffer, and the same sums just before rank 0's buffers are broadcast), and
the BatchNorm classes in the model. MODE ``nan``: process 1 feeds NaN images at its second step;
every process records how many batches it took. MODE ``oom``: process 1 runs out of memory
(``torch.cuda.OutOfMemoryError``) at its second step. MODE ``nan-late``: figures are read back every 3
steps and process 1 feeds NaN images at its second step. MODE ``accumulate``: every process counts
DDP's ``no_sync`` calls. MODE ``unshared``: process 1 does not see
the files rank 0 writes into the run directory (another node without a shared file system).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from reben_tools.learn.runtime import distributed
from reben_tools.learn.training import loop, skeleton

mode, record_dir = sys.argv[1], Path(sys.argv[2])
args = sys.argv[sys.argv.index("--") + 1 :]
rank = int(os.environ["RANK"])
record: dict = {"rank": rank, "validations": [], "before_broadcast": [], "flips": 0}


def buffer_sums(model) -> list[float]:
    return [float(b.double().sum()) for name, b in model.named_buffers() if "running" in name]


if mode == "bn":
    original_predict, original_broadcast = loop.predict, distributed.Distributed.broadcast_buffers

    def observed_predict(model, *a, **k):
        record["validations"].append(buffer_sums(model))
        record["batchnorm"] = sorted({type(m).__name__ for m in model.modules() if "BatchNorm" in type(m).__name__})
        return original_predict(model, *a, **k)

    def observed_broadcast(self, module):
        record["before_broadcast"].append(buffer_sums(module))
        return original_broadcast(self, module)

    loop.predict = observed_predict
    distributed.Distributed.broadcast_buffers = observed_broadcast
elif mode == "nan":
    original_flips = loop.random_flips

    def faulty_flips(images, generator):
        record["flips"] += 1
        images = original_flips(images, generator)
        return images * float("nan") if rank == 1 and record["flips"] == 2 else images

    loop.random_flips = faulty_flips
elif mode == "oom":
    original_flips = loop.random_flips

    def oom_flips(images, generator):
        record["flips"] += 1
        if rank == 1 and record["flips"] == 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return original_flips(images, generator)

    loop.random_flips = oom_flips
elif mode == "nan-late":  # as on a GPU: figures read back every 3 steps; the NaN of process 1's step 2 has
    # reached process 0's weights (all-reduced gradients) by step 3
    skeleton.sync_interval = lambda device, per_step_callback: 3
    original_flips = loop.random_flips

    def late_nan_flips(images, generator):
        record["flips"] += 1
        images = original_flips(images, generator)
        return images * float("nan") if rank == 1 and record["flips"] == 2 else images

    loop.random_flips = late_nan_flips
elif mode == "accumulate":  # count the micro-batches whose gradients DDP does not all-reduce
    record["no_sync"] = 0
    original_no_sync = torch.nn.parallel.DistributedDataParallel.no_sync

    def counted_no_sync(self):
        record["no_sync"] += 1
        return original_no_sync(self)

    torch.nn.parallel.DistributedDataParallel.no_sync = counted_no_sync
elif mode == "unshared" and rank == 1:  # process 1 is on a node that does not see rank 0's files
    original_is_file = Path.is_file
    Path.is_file = lambda self: False if self.name.startswith(".reben-shared-check") else original_is_file(self)


def save() -> None:
    record_dir.mkdir(parents=True, exist_ok=True)
    (record_dir / f"rank{rank}.json").write_text(json.dumps(record))


torch.set_num_threads(1)
from reben_tools.cli import app  # noqa: E402

try:
    app(args, prog_name="reben")
finally:
    save()
