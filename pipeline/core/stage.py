"""What every DVC stage entry point shares: one-line user errors, torchrun set-up, tracking,
and interrupts.

A stage script parses its paths, then::

    with stage_context("pretrain") as (params, tracker):
        run_pretrain(params, ..., tracker)

Ctrl-C (SIGINT) and SIGTERM end the stage's MLflow run as KILLED and print one line, e.g.
`interrupted in epoch 3 of tune; run make repro to resume from epoch 2`; the exit status is
128 + the signal number (130 for Ctrl-C), as a shell reports a signal.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import os
import signal
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.core.config import Params, load_params
from pipeline.core.errors import Interrupted, UserError
from pipeline.core.io import atomic_write_json, atomic_write_text, sweep_temps

TIMING_FILE = "timing.json"


@contextlib.contextmanager
def stage_context(name: str, params_path: str = "params.yaml", distributed: bool = False,
                  outputs: Sequence[str | Path] = ()) -> Iterator[tuple[Params, object]]:
    """Remove what killed runs left of `outputs` (`sweep_temps`), load params, (re)launch
    under torchrun when `dist` asks for it, open the MLflow run.

    User errors become one line on stderr and exit status 2; an interrupt becomes one line
    and exit status 128 + signal; bugs keep their traceback.
    """
    from pipeline.core import dist
    from pipeline.core.tracking import start_run

    signal.signal(signal.SIGTERM, functools.partial(_raise_interrupted, os.getpid()))
    if int(os.environ.get("RANK", "0")) == 0:   # the launcher, or rank 0 before any write
        sweep_temps(outputs)
    try:
        params = load_params(params_path)
        if distributed:
            from pipeline.core.launch import ensure_fast_allocator, maybe_relaunch, run_identity

            ensure_fast_allocator(sys.argv)
            maybe_relaunch(params.dist, sys.argv, name)
            dist.init(params.dist, agree_on=run_identity(name, params))
        if dist.is_main():
            _warn_if_bf16_is_slow(name, params)
        try:
            with start_run(name, params) as tracker:
                yield params, tracker
        finally:
            if distributed:
                dist.teardown()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        if dist.is_main():
            print(interrupt_message(name, getattr(exc, "epoch", None)), file=sys.stderr)
        sys.exit(128 + signum)


def _warn_if_bf16_is_slow(stage: str, params: Params) -> None:
    """One line on stderr when the stage's precision is bf16 on a device with no native
    bf16 kernels: the run is correct but far slower than fp32 there."""
    from pipeline.core import dist

    group = {"evaluate": "eval"}.get(stage, stage)
    if getattr(getattr(params, group, None), "precision", "fp32") != "bf16":
        return
    device = dist.device()
    if not dist.native_bf16(device):
        print(f"warning: {group}.precision is bf16, but this {device.type} has no native bf16 "
              "matrix kernels (a CPU needs AVX512-BF16 or AMX), so bf16 runs several times "
              f"slower than fp32 here; set {group}.precision: fp32 unless you mean it",
              file=sys.stderr, flush=True)


def worker_init() -> None:
    """Initializer of a stage's process pools: SIGTERM kills a worker at once. A Python-level
    handler runs only between bytecodes, so a worker blocked on the pool's queue lock when
    `Pool.terminate` signals it would never run one, and the stage would hang in its join."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _raise_interrupted(owner: int, signum: int, _frame: object) -> None:
    """SIGTERM in the stage's process `owner` -> Interrupted; a forked worker signalled
    before its `worker_init` ran dies quietly instead."""
    if os.getpid() != owner:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise Interrupted(signum)


def interrupt_message(stage: str, epoch: int | None) -> str:
    """The one line printed for an interrupted stage (`epoch` 1-based, None outside training)."""
    if epoch is None:
        return f"interrupted during {stage}; run make repro to run it again"
    if epoch == 1:
        return f"interrupted in epoch 1 of {stage}; run make repro to start it again"
    return (f"interrupted in epoch {epoch} of {stage}; run make repro to resume from epoch "
            f"{epoch - 1}")


def write_outputs(metrics_path: Path, metrics: Mapping[str, Any], curve_path: Path,
                  history: Sequence[Mapping[str, Any]], columns: Sequence[str],
                  tracker: Any) -> None:
    """A training stage's tail (rank 0 only): the metrics JSON, the per-epoch curve CSV
    (a column missing from an epoch is left empty), and the scalar metrics to the tracker."""
    from pipeline.core import dist

    if not dist.is_main():
        return
    atomic_write_json(metrics_path, dict(metrics))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([h.get(c, "") for c in columns] for h in history)
    atomic_write_text(curve_path, buf.getvalue())
    tracker.log_metrics({k: v for k, v in metrics.items() if not isinstance(v, list)},
                        step=len(history))


def write_timing(metrics_path: Path, stage: str, timing: Mapping[str, Any], tracker: Any) -> None:
    """A stage's timings, throughputs and sizes (rank 0 only): to the tracker and, under the
    stage's key, to `timing.json` beside its metrics. Not a DVC metric: they change on every
    run and would bury the results in `dvc exp show`; three stages write it, so it is no
    stage's output either (git ignores it)."""
    from pipeline.core import dist

    if not dist.is_main():
        return
    path = Path(metrics_path).parent / TIMING_FILE
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}   # first stage, or a file cut short: start afresh
    atomic_write_json(path, {**(known if isinstance(known, dict) else {}), stage: dict(timing)})
    tracker.log_metrics({f"timing/{k}": v for k, v in timing.items()})
