"""pipeline.core.stage: signals in the processes of a stage."""

from __future__ import annotations

import os
import signal
from multiprocessing import Pool

from pipeline.core import stage
from pipeline.data.pku import ordered_map


def _sigterm_disposition(_: int) -> bool:
    return signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_pool_workers_die_on_sigterm_at_once_instead_of_inheriting_the_stage_handler():
    """The stage's Python-level SIGTERM handler runs only between bytecodes: a worker blocked
    on the pool's queue lock when `Pool.terminate` signals it never runs it, and the stage
    hung in the pool's join (seen in the e2e suite). `worker_init` restores the default."""
    previous = signal.signal(signal.SIGTERM, lambda *a: stage._raise_interrupted(os.getpid(), *a))
    try:
        with Pool(2) as pool:
            assert not any(pool.map(_sigterm_disposition, range(4)))   # what workers inherit
        with Pool(2, initializer=stage.worker_init) as pool:
            assert all(pool.map(_sigterm_disposition, range(4)))
        assert all(ordered_map(_sigterm_disposition, range(4), workers=2))  # the PKU pool
    finally:
        signal.signal(signal.SIGTERM, previous)
