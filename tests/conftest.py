"""Fixtures and helpers shared by the test wings: a free localhost port and a tiny store."""

from __future__ import annotations

import socket
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.store import SampleMeta, StoreWriter


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def port() -> int:
    return free_port()


def write_store(out: Path, samples: Iterable[tuple[str, int, str, np.ndarray]],
                class_names: list[str], novel_labels: Iterable[int] = (),
                dataset: str = "tiny") -> Path:
    """A packed store from (name, label, split, frames (T, M, V, C)) rows; the performer is the
    row number and a sample is novel when its label is."""
    novel = set(novel_labels)
    with StoreWriter(out, dataset=dataset, benchmark="xsub", class_names=class_names,
                     novel_labels=sorted(novel)) as w:
        for i, (name, label, split, frames) in enumerate(samples):
            w.add(SampleMeta(name=name, label=label, performer=i, camera=1, setup=1,
                             replication=1, split=split, novel=label in novel),
                  np.asarray(frames, dtype=np.float32))
    return out
