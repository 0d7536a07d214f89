"""Checkpoint schema: round trip, atomic save, safe load, unwrapped keys, fingerprints."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from pipeline.core.errors import UserError
from pipeline.training import checkpoint


def tiny() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_round_trip_keeps_every_key_and_loads_weights_only(tmp_path):
    model = tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    ckpt = checkpoint.make("mamp", model, opt, step=7, epoch=2, config={"lr": 1e-3},
                           fingerprint="abc:123", extra={"history": [{"loss": 1.0}]})
    checkpoint.save(tmp_path / "last.pt", ckpt)
    back = checkpoint.load(tmp_path / "last.pt")
    assert set(back) == set(checkpoint.KEYS)
    assert (back["kind"], back["step"], back["epoch"], back["fingerprint"]) == \
        ("mamp", 7, 2, "abc:123")
    assert back["scaler"] is None and back["extra"]["history"] == [{"loss": 1.0}]
    for k, v in model.state_dict().items():
        assert torch.equal(back["model"][k], v)
    fresh = torch.optim.AdamW(tiny().parameters(), lr=1e-3)
    fresh.load_state_dict(back["optimizer"])


def test_saved_keys_have_no_wrapper_prefixes():
    model = tiny()
    compiled = torch.compile(model)          # lazy: nothing is compiled until called
    assert checkpoint.unwrap(compiled) is model
    assert set(checkpoint.make("x", compiled)["model"]) == set(model.state_dict())


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_load_refuses_a_malicious_pickle(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Exploit(marker)}, evil)
    with pytest.raises(UserError, match=r"evil\.pt: refused: it holds a Python object"):
        checkpoint.load(evil)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a zip file at all", b"PK\x03\x04broken"])
def test_load_names_the_file_when_unreadable(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=r"bad\.pt: not a readable"):
        checkpoint.load(path)


def test_load_rejects_missing_file_and_foreign_dicts(tmp_path):
    with pytest.raises(UserError, match="checkpoint file not found"):
        checkpoint.load(tmp_path / "absent.pt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(UserError, match="not a pipeline checkpoint"):
        checkpoint.load(tmp_path / "foreign.pt")


def test_failed_save_leaves_previous_file_intact(tmp_path):
    path = tmp_path / "last.pt"
    checkpoint.save(path, checkpoint.make("x", tiny(), epoch=1))
    before = path.read_bytes()
    broken = checkpoint.make("x", tiny(), epoch=2, extra={"lock": threading.Lock()})
    with pytest.raises(TypeError, match="cannot pickle"):
        checkpoint.save(path, broken)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_fingerprint_changes_with_data_or_config():
    base = checkpoint.fingerprint("data1", {"lr": 1e-3, "epochs": 2})
    assert base == checkpoint.fingerprint("data1", {"epochs": 2, "lr": 1e-3})
    assert base != checkpoint.fingerprint("data2", {"lr": 1e-3, "epochs": 2})
    assert base != checkpoint.fingerprint("data1", {"lr": 2e-3, "epochs": 2})


def test_weights_digest_depends_on_values_names_and_dtypes_only():
    state = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(2, dtype=torch.int64)}
    digest = checkpoint.weights_digest(state)
    assert checkpoint.weights_digest(dict(reversed(state.items()))) == digest   # any order
    assert checkpoint.weights_digest({k: v.clone() for k, v in state.items()}) == digest
    changed = [{**state, "b": state["b"] + 1e-6}, {**state, "a": state["a"].int()},
               {**state, "b": state["b"].reshape(3, 2)}, {"c": state["b"], "a": state["a"]}]
    assert len({digest, *map(checkpoint.weights_digest, changed)}) == 5
