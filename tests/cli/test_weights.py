"""Importing published MAMP / STARS weights: round trips, safe loading, precise mismatch errors."""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from pipeline.__main__ import main
from pipeline.cli.weights import export_mamp, export_stars, import_weights
from pipeline.core.config import ModelConfig, TuneConfig
from pipeline.core.errors import UserError
from pipeline.models.encoder import Encoder
from pipeline.models.mamp import MAMP
from pipeline.models.stars import STARS
from pipeline.training import checkpoint
from tests.fidelity.golden import FIXTURES, ROOT, SMALL

TINY = ModelConfig(depth=2, dim=16, heads=2, frames=8, t_patch=4, joints=5,
                   decoder_depth=1, decoder_dim=16, decoder_heads=2)


def _x(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 2, 8, 5, 3, generator=torch.Generator().manual_seed(0))


def _published_mamp(path: Path, model: MAMP, num_heads: int = 2) -> None:
    """A file in the release's layout (main_pretrain.py -> misc.save_model)."""
    opt = torch.optim.AdamW(model.parameters())
    model(_x(), torch.arange(2)).backward()
    opt.step()
    args = argparse.Namespace(model="model_mamp.transformer.Transformer", mask_ratio=0.9,
                              motion_aware_tau=0.8, model_args={"num_heads": num_heads,
                                                                "dim_feat": 16})
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 399,
                "scaler": {"scale": 65536.0}, "args": args}, path)


def _published_stars(path: Path, predictor_dim: int = 32) -> dict:
    """A plain state dict in the STARS release's layout."""
    torch.manual_seed(1)
    encoder = Encoder(TINY)
    head = nn.Module()
    head.projector = nn.Sequential(nn.BatchNorm1d(16))
    head.predictor = nn.Sequential(nn.Linear(16, predictor_dim, bias=False),
                                   nn.BatchNorm1d(predictor_dim), nn.ReLU(),
                                   nn.Linear(predictor_dim, 16))
    head.projector(torch.randn(4, 16))                               # non-trivial BN statistics
    state = {f"encoder_student.{k}": v for k, v in encoder.state_dict().items()}
    state.update({f"encoder_student.head.{k}": v for k, v in head.state_dict().items()})
    state.update({"queue": torch.randn(16, 64), "queue_ptr": torch.zeros(1, dtype=torch.long),
                  "queue_id": torch.arange(64)})
    torch.save(state, path)
    return state


class _Touch:
    """Unpickling this would run a shell command (the attack a weights-only load stops)."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_mamp_published_file_imports_into_our_schema(tmp_path):
    src, dst = tmp_path / "mamp.pth", tmp_path / "ours.pt"
    model = MAMP(TINY, 0.75, 0.8)
    _published_mamp(src, model)
    summary = import_weights("mamp", src, dst, TINY)
    ours = checkpoint.load(dst)                                       # our schema, every key
    assert ours["kind"] == "mamp" and ours["step"] == 0 and ours["epoch"] == 400
    assert ours["source"] == f"imported:{src}"
    assert ours["config"]["model"]["depth"] == TINY.depth
    assert ours["model"].keys() == model.state_dict().keys()
    assert summary["heads_checked"] and summary["mask_ratio"] == 0.9 and summary["tau"] == 0.8
    restored = MAMP(TINY, 0.75, 0.8)
    restored.load_state_dict(ours["model"])
    torch.testing.assert_close(restored.forward_features(_x()), model.forward_features(_x()),
                               rtol=0, atol=0)


def test_mamp_round_trip_through_the_published_format_keeps_encoder_outputs(tmp_path):
    model = MAMP(TINY, 0.75, 0.8).eval()
    ours = {"kind": "mamp", "model": model.state_dict(), "epoch": 7, "step": 70,
            "config": {"model": asdict(TINY), "pretrain": {"mask_ratio": 0.75, "tau": 0.8}}}
    export_mamp(ours, tmp_path / "published.pth")
    with torch.serialization.safe_globals([argparse.Namespace]):
        published = torch.load(tmp_path / "published.pth", weights_only=True)
    assert set(published) == {"model", "epoch", "args"} and published["epoch"] == 6
    assert published["args"].model_args["num_heads"] == TINY.heads
    import_weights("mamp", tmp_path / "published.pth", tmp_path / "back.pt", TINY)
    back = MAMP(TINY, 0.75, 0.8).eval()
    reimported = checkpoint.load(tmp_path / "back.pt")
    assert reimported["epoch"] == 7
    back.load_state_dict(reimported["model"])
    x = _x()
    assert torch.equal(back.forward_tokens(x), model.forward_tokens(x))
    assert torch.equal(back(x, torch.arange(2)), model(x, torch.arange(2)))


@pytest.mark.parametrize("fmt", ["mamp", "stars"])
def test_a_checkpoint_that_would_run_code_is_refused_without_side_effects(tmp_path, fmt):
    pwned, src, dst = tmp_path / "pwned", tmp_path / "evil.pth", tmp_path / "out" / "ours.pt"
    torch.save({"model": _Touch(pwned), "encoder_student.x": torch.zeros(1)}, src)
    with pytest.raises(UserError, match=r"evil\.pth: refused.*posix\.system") as err:
        import_weights(fmt, src, dst, TINY)
    assert "\n" not in str(err.value)
    assert not pwned.exists()
    assert not dst.exists() and not dst.parent.exists()


def test_shape_mismatch_names_the_key_and_both_shapes(tmp_path):
    src = tmp_path / "mamp.pth"
    _published_mamp(src, MAMP(TINY, 0.75, 0.8))
    wider = replace(TINY, dim=32)
    with pytest.raises(UserError) as err:
        import_weights("mamp", src, tmp_path / "ours.pt", wider)
    message = str(err.value)
    assert "temp_embed has shape (1, 2, 1, 16) in the file but (1, 2, 1, 32)" in message
    assert not (tmp_path / "ours.pt").exists()


def test_missing_and_unexpected_keys_are_named(tmp_path):
    src = tmp_path / "mamp.pth"
    _published_mamp(src, MAMP(TINY, 0.75, 0.8))
    with pytest.raises(UserError, match=r"missing blocks\.2\.norm1\.weight"):
        import_weights("mamp", src, tmp_path / "a.pt", replace(TINY, depth=3))
    with torch.serialization.safe_globals([argparse.Namespace]):
        published = torch.load(src, weights_only=True)
    published["model"]["extra.weight"] = torch.zeros(1)
    torch.save(published, src)
    with pytest.raises(UserError, match=r"unexpected extra\.weight"):
        import_weights("mamp", src, tmp_path / "b.pt", TINY)


def test_head_count_mismatch_is_caught_from_the_published_args(tmp_path):
    src = tmp_path / "mamp.pth"
    _published_mamp(src, MAMP(TINY, 0.75, 0.8), num_heads=4)
    with pytest.raises(UserError, match=r"num_heads=4 but model\.heads is 2"):
        import_weights("mamp", src, tmp_path / "ours.pt", TINY)


def test_stars_import_gives_the_stars_module_layout_and_exports_back_identically(tmp_path):
    src = tmp_path / "stars.pth"
    published = _published_stars(src)
    summary = import_weights("stars", src, tmp_path / "ours.pt", TINY, predictor_dim=32)
    assert summary["queue_size"] == 64
    ours = checkpoint.load(tmp_path / "ours.pt")
    assert ours["kind"] == "stars" and ours["source"] == f"imported:{src}"
    model = STARS(TINY, TuneConfig(predictor_dim=32, queue_size=64))
    model.load_state_dict(ours["model"])                              # strict: every key
    assert torch.equal(model.queue.queue, published["queue"].T)       # (D, K) -> (K, D)
    assert torch.equal(model.head.projector[0].running_mean,
                       published["encoder_student.head.projector.0.running_mean"])
    encoder = Encoder(TINY)
    encoder.load_state_dict({k: ours["model"][k] for k in encoder.state_dict()})
    export_stars(tmp_path / "ours.pt", tmp_path / "again.pth")
    again = torch.load(tmp_path / "again.pth", weights_only=True)
    assert again.keys() == published.keys()
    assert all(torch.equal(again[k], published[k]) for k in published)


def test_stars_predictor_width_mismatch_names_the_key(tmp_path):
    src = tmp_path / "stars.pth"
    _published_stars(src, predictor_dim=32)
    with pytest.raises(UserError, match=r"encoder_student\.head\.predictor\.0\.weight has "
                                        r"shape \(32, 16\) in the file but \(4096, 16\)"):
        import_weights("stars", src, tmp_path / "ours.pt", TINY)


def test_stars_queue_in_the_wrong_layout_is_named(tmp_path):
    src = tmp_path / "stars.pth"
    published = _published_stars(src)
    published["queue"] = published["queue"].T.contiguous()            # (K, D) instead of (D, K)
    torch.save(published, src)
    with pytest.raises(UserError, match=r"queue has shape \(64, 16\) in the file; expected "
                                        r"\(model.dim, queue size\) = \(16, K\)"):
        import_weights("stars", src, tmp_path / "ours.pt", TINY, predictor_dim=32)


def test_wrong_format_and_unreadable_files_are_one_line_errors(tmp_path):
    src = tmp_path / "stars.pth"
    _published_stars(src)
    with pytest.raises(UserError, match="not a MAMP checkpoint"):
        import_weights("mamp", src, tmp_path / "a.pt", TINY)
    with pytest.raises(UserError, match="file not found"):
        import_weights("mamp", tmp_path / "absent.pth", tmp_path / "a.pt", TINY)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="garbage.pth: ") as err:
        import_weights("stars", garbage, tmp_path / "a.pt", TINY)
    assert "\n" not in str(err.value)


def test_cli_imports_the_stars_repos_mamp_copy_saved_with_epoch_last(tmp_path, capsys):
    """The STARS repository's MAMP saves `epoch: 'last'`; the CLI imports it (it used to
    stop with a traceback) as a completed run of `args.epochs`."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["model"] = asdict(SMALL)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    out = tmp_path / "mamp.pt"
    argv = ["--params", str(params), "import-weights", "--format", "mamp",
            str(FIXTURES / "mamp_release_epoch_last.pth"), str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    assert checkpoint.load(out)["epoch"] == 400
