"""`lungseg predict --ray [ADDRESS]`: the same run spread over a Ray cluster's actors.

Ray Data holds the inputs as the local run's own batches (jobs[i:i + batch_size]), actors each
hold the model once (one per GPU, or one per CPU core with one torch thread) and run exactly the
local code on their batch (lungseg.inference.predict.predict_all), writing into --out; the rows
come back in input order (preserve_order) to the one table the driver writes. The batches are
the local run's, so the outputs are byte for byte those of a local run. Inputs and --out must be
paths every node sees (a shared filesystem). Without an address Ray starts on this machine.

ray is optional (`pip install 'lungseg[ray]'`), imported only here and only when asked for.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable

from lungseg.core.errors import LungsegError, WriteFailed

LOCAL = "local"  # --ray without an address: start Ray on this machine
INSTALL_HINT = "install the ray extra: pip install 'lungseg[ray]'"


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401  (the Data library ships in the same wheel, with pyarrow)
    except ImportError as problem:
        raise LungsegError(f"--ray needs Ray Data ({problem.name} is missing): {INSTALL_HINT}") from None
    return ray


class Segmenter:
    """A Ray actor holding the model; each call segments one of the local run's batches.

    Args:
        model, device, threshold: as for lungseg.inference.formats.load_predictor.
        outputs: where and how to write (lungseg.inference.predict.Outputs), the same for every actor.
    """

    def __init__(self, model: str, device: str, threshold: float | None, outputs):
        import torch

        from lungseg.inference.formats import load_predictor

        torch.set_num_threads(1)  # one core each: the actors share the machine's cores
        self.predictor, self.outputs = load_predictor(model, device, threshold), outputs

    def __call__(self, batch: dict) -> dict:
        from lungseg.inference.predict import Job, predict_all

        jobs = [Job(str(source), str(name)) for source, name in zip(batch["sources"][0], batch["names"][0])]
        rows = predict_all(self.predictor, jobs, self.outputs, len(jobs), quiet=True, workers=1)
        return {"rows": [json.dumps(rows)]}


def predict_on_ray(address: str, model: str, device: str, threshold: float | None, jobs: list, outputs,
                   batch_size: int, sink: Callable[[dict], None]) -> None:
    """Segment `jobs` on a Ray cluster and hand each row to `sink` in input order.

    Args:
        address: a Ray address (e.g. "auto", "ray://head:10001"), or LOCAL for a Ray started here.
        model, device, threshold: what each actor loads.
        jobs: the inputs and their output names. outputs: where and how to write.
        batch_size: images per model call (the local run's batches).
        sink: takes each row (e.g. the table's writer).

    Raises:
        LungsegError: Ray is not installed, or cannot be reached.
        WriteFailed: an actor's write into --out failed.
    """
    ray = _ray()
    logging.getLogger("ray").setLevel(logging.ERROR)  # Ray Data reports each dataset's execution at INFO
    try:
        ray.init(address=None if address == LOCAL else address, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
    except (ConnectionError, RuntimeError, ValueError) as problem:
        raise LungsegError(f"--ray {address}: cannot reach a Ray cluster there: {problem}") from None
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # rows come back in input order
        context.enable_progress_bars = False
        batches = [{"sources": [job.source for job in jobs[start:start + batch_size]],
                    "names": [job.name for job in jobs[start:start + batch_size]]}
                   for start in range(0, len(jobs), batch_size)]
        if not batches:
            return
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0)) if device in ("auto", "cuda") else 0
        actors = max(1, min(len(batches), gpus or int(resources.get("CPU", 1))))
        segmented = ray.data.from_items(batches).map_batches(
            Segmenter, batch_size=1, concurrency=actors, num_cpus=0 if gpus else 1, num_gpus=1 if gpus else 0,
            fn_constructor_kwargs={"model": model, "device": device, "threshold": threshold, "outputs": outputs})
        try:
            for item in segmented.iter_rows():
                for row in json.loads(item["rows"]):
                    if row["error"]:
                        print(f"error: {row['error']}", file=sys.stderr)
                    sink(row)
        except ray.exceptions.RayError as problem:
            cause = getattr(problem, "cause", None)
            if isinstance(cause, WriteFailed):
                raise cause from None
            if isinstance(cause, OSError):
                raise WriteFailed(cause, []) from None
            raise
    finally:
        ray.shutdown()
