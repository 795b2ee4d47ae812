"""Training in several processes (GPUs, or CPU processes; on one machine or many) with torchrun
and DistributedDataParallel (DDP).

How the work is split, so that a run's result does not depend on how many processes share it:

- Data: rank r of W holds items r, r+W, r+2W, ... of the train and validation sets on its device
  (`shard`). The shards are fixed for the whole run: no data moves between devices, and the
  stride spreads any ordering of the split (by source, by id) evenly over the ranks.
- Batch: `train.batch_size` is the global batch whatever W is; each rank steps on
  batch_size // W images of its shard (`local_batch_size`), and DDP averages the gradients, so
  each update is the mean gradient over the global batch, as one process computes it. The
  learning rate and its schedule are therefore unchanged.
- Steps: every rank takes ceil(len(train) / batch_size) steps per epoch, as one process does
  (`steps_per_epoch`); a rank whose shard runs out wraps around to its start (`wrap_around`),
  since every step is a collective that all ranks must join.
- BatchNorm: on CUDA, SyncBatchNorm normalises by the statistics of the global batch. PyTorch
  2.13 has no SyncBatchNorm on CPU, so CPU ranks normalise by their local batch: the one source
  of difference from a one-process run besides which images meet in a batch.
- Validation: each rank scores its validation shard; the sums are added up across ranks, so
  every rank sees the same metrics and keeps the same best epoch. The non-finite-loss check
  is combined the same way, so all ranks stop together.
- Outputs: written by rank 0 only.

Starting a run:

- One machine: set `train.nproc` in params.yaml (`dvc exp run -S train.nproc=4`). The train
  stage, started as usual by `dvc repro`, then replaces itself with
  `python -m torch.distributed.run --standalone --nproc-per-node=4 stages/train.py` (`relaunch`).
- Several machines: run the same script under torchrun on each machine, from a project folder
  holding the same data/processed and data/split.csv, e.g. two machines with 8 GPUs each:

      torchrun --nnodes=2 --node-rank=0 --nproc-per-node=8 --master-addr=HOST0 --master-port=29500 stages/train.py
      torchrun --nnodes=2 --node-rank=1 --nproc-per-node=8 --master-addr=HOST0 --master-port=29500 stages/train.py

  (the first on HOST0, the second on the other machine). torchrun's WORLD_SIZE then decides
  and train.nproc is ignored; rank 0, on node 0, writes results/. Record the run in DVC with
  `dvc commit train` on that machine.
"""

from __future__ import annotations

import inspect
import os
import sys
from typing import NamedTuple

import torch
import torch.distributed as dist

from lungseg.core.errors import ParamsError

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")  # set by torchrun for every process it starts


class Worker(NamedTuple):
    """This process's place in a distributed run.

    Args:
        rank: 0 .. world - 1 over all machines.
        world: processes in the run.
        local_rank: on this machine: picks the GPU.
        device: where this process computes.
    """

    rank: int  # 0 .. world - 1 over all machines
    world: int  # processes in the run
    local_rank: int  # on this machine: picks the GPU
    device: torch.device


# --------------------------------------------------------------------------- starting and stopping


def launched() -> bool:
    """Whether this process was started by torchrun (or a launcher that sets the same variables).

    Returns:
        True when all of LAUNCH_VARIABLES are set.
    """
    return all(name in os.environ for name in LAUNCH_VARIABLES)


def is_distributed() -> bool:
    """Whether this process has joined a process group (setup).

    Returns:
        True when torch.distributed is available and initialised.
    """
    return dist.is_available() and dist.is_initialized()


def check_launch(nproc: int, batch_size: int, device: torch.device) -> None:
    """Check what must hold before `nproc` processes are started on this machine.

    The global batch splits evenly, the device can be shared, and on CUDA there is one GPU per process.

    Args:
        nproc: processes to start (train.nproc).
        batch_size: the global batch (train.batch_size).
        device: the training device.

    Raises:
        ParamsError: when any of these does not hold.
    """
    local_batch_size(batch_size, nproc)
    check_device(device)
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise ParamsError(f"train.nproc={nproc} starts one process per GPU, but this machine has "
                          f"{torch.cuda.device_count()} CUDA GPU(s); lower train.nproc")


def check_device(device: torch.device) -> None:
    """Check that distributed training can run on `device`: CUDA (NCCL) or CPU (gloo).

    Args:
        device: the training device.

    Raises:
        ParamsError: for any other device type (e.g. Apple MPS).
    """
    if device.type not in ("cuda", "cpu"):
        raise ParamsError(f"distributed training runs on CUDA (NCCL) or CPU (gloo), but train.device gives "
                          f"{device.type}: set train.nproc to 1 or train.device to cuda or cpu")


def relaunch(nproc: int, script: str, argv: list[str] | None = None) -> None:
    """Replace this process with torchrun starting `nproc` copies of `script` on this machine.

    exec, not a child process: dvc (or a shell) keeps waiting on the same process id, gets
    torchrun's exit status, and its signals (Ctrl-C) reach torchrun, which passes them on to
    every rank. Never returns.

    Args:
        nproc: processes to start.
        script: the script each process runs.
        argv: its arguments; None: this process's own (sys.argv[1:]).
    """
    env = dict(os.environ)
    # torchrun would set 1 thread per process; share the cores instead (matters on CPU only)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               os.path.abspath(script), *(sys.argv[1:] if argv is None else argv)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, command, env)


def setup(device: torch.device) -> Worker:
    """Join the process group torchrun set up: NCCL with one GPU per process on CUDA, gloo on CPU.

    Args:
        device: the training device; on CUDA, each process takes the GPU of its local rank.

    Returns:
        this process's Worker.

    Raises:
        ParamsError: for a device distributed training cannot use (check_device), or a local rank with no GPU of its
            own.
    """
    check_device(device)
    rank, world, local_rank = (int(os.environ[name]) for name in LAUNCH_VARIABLES)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ParamsError(f"local rank {local_rank} has no GPU of its own: this machine has {torch.cuda.device_count()} "
                              f"CUDA GPU(s); start at most that many processes per machine (--nproc-per-node or train.nproc)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return Worker(rank, world, local_rank, device)


def cleanup() -> None:
    """Leave the process group (safe to call when none was joined)."""
    if is_distributed():
        dist.destroy_process_group()


# --------------------------------------------------------------------------- splitting the work


def shard(items, rank: int, world: int):
    """Items rank, rank + world, rank + 2 * world, ... of a list, array or tensor (first axis).

    Static: each rank puts its shard on its device once and keeps it. Strided, not in blocks,
    so a split ordered by source or id gives every rank the same mix.

    Args:
        items: a list, array or tensor.
        rank: this process's rank.
        world: processes in the run.

    Returns:
        this rank's items, of the same type.
    """
    return items[rank::world]


def local_batch_size(batch_size: int, world: int) -> int:
    """Each rank's share of the global batch; the shares must be equal, because DDP averages the ranks' gradients
    with equal weights.

    Args:
        batch_size: the global batch (train.batch_size).
        world: processes in the run.

    Returns:
        batch_size // world.

    Raises:
        ParamsError: when batch_size is not divisible by world.
    """
    if batch_size % world:
        raise ParamsError(f"train.batch_size={batch_size} must be divisible by the number of training processes "
                          f"({world}, from train.nproc or torchrun): the global batch is split evenly between them; "
                          f"use a multiple of {world}, e.g. {max(world, batch_size // world * world)}")
    return batch_size // world


def steps_per_epoch(n_items: int, batch_size: int) -> int:
    """Steps one process takes through `n_items` in batches of `batch_size` (the last one short);
    every rank takes this many, whatever the number of ranks.

    Args:
        n_items: the training items (all ranks together).
        batch_size: the global batch.

    Returns:
        ceil(n_items / batch_size).
    """
    return -(-n_items // batch_size)


def wrap_around(order: torch.Tensor, length: int) -> torch.Tensor:
    """`order` repeated from its start until it is `length` long, then cut to `length` (a longer order is only cut).

    Args:
        order: a rank's item order for one epoch.
        length: the items it must supply.

    Returns:
        the first `length` items of `order` repeated.

    Raises:
        ValueError: for an empty order (a rank with no training images cannot take steps).
    """
    if len(order) == 0:
        raise ValueError("cannot wrap an empty order: a rank with no training images cannot take steps")
    return order.repeat(-(-length // len(order)))[:length]


# --------------------------------------------------------------------------- model and numbers


def sync_batchnorm(model: torch.nn.Module, worker: Worker) -> torch.nn.Module:
    """`model` with SyncBatchNorm in place of BatchNorm on CUDA with several ranks (changed in
    place when the top module is not a BatchNorm itself; the weights and the state_dict keys
    stay the same). On CPU PyTorch has none, and with one rank it would change nothing.

    Args:
        model: the network.
        worker: this process's Worker.

    Returns:
        the converted model, or `model` itself on CPU or with one rank.
    """
    if worker.device.type == "cuda" and worker.world > 1:
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def wrap(network: torch.nn.Module, worker: Worker) -> torch.nn.parallel.DistributedDataParallel:
    """DDP around `network` (already compiled, if it is: then validation can run the compiled
    module without DDP). Buffers are not broadcast at every step: the BatchNorm running
    statistics are averaged once per epoch instead (`average_buffers`).

    Args:
        network: the model to train.
        worker: this process's Worker (on CUDA, its device is DDP's device).

    Returns:
        the DistributedDataParallel module.
    """
    ddp = torch.nn.parallel.DistributedDataParallel
    # torch 2.13 renamed broadcast_buffers (the old name warns); older builds know only the old one
    no_buffer_sync = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters else "broadcast_buffers"
    device_ids = [worker.device] if worker.device.type == "cuda" else None
    return ddp(network, device_ids=device_ids, **{no_buffer_sync: False})


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over all ranks, in place.

    Args:
        tensor: this rank's values, on its device.

    Returns:
        `tensor` itself (for convenience), now holding the sum.
    """
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_min(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor`'s elementwise minimum over all ranks, in place.

    Args:
        tensor: this rank's values, on its device.

    Returns:
        `tensor` itself, now holding the minimum.
    """
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return tensor


def sum_over_ranks(count: int, device: torch.device) -> int:
    """A count added up over all ranks.

    Args:
        count: this rank's count.
        device: this rank's device (the collective's tensor lives there).

    Returns:
        the total.
    """
    return int(all_reduce_sum(torch.tensor(count, dtype=torch.long, device=device)))


@torch.no_grad()
def average_buffers(model: torch.nn.Module) -> None:
    """Replace every floating-point buffer (BatchNorm running mean and variance) by its mean over
    the ranks, in one collective. Each rank's running statistics follow its own local batches;
    the running mean is linear in them, so their mean is what one update with the global batch's
    statistics gives. Integer buffers (batches seen) are equal on every rank already.

    Args:
        model: the network (changed in place).
    """
    buffers = [b for b in model.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = all_reduce_sum(torch.cat([b.reshape(-1) for b in buffers])) / dist.get_world_size()
    for buffer, mean in zip(buffers, flat.split([b.numel() for b in buffers])):
        buffer.copy_(mean.view_as(buffer))
