"""Smoke tests of `make bench` (benchmarks/run.py) at `--quick` sizes, outputs in tmp_path."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import run
from benchmarks.common import bf16_measurable, mamp_flops_per_sample, paper_model
from benchmarks.run import SECTIONS, main
from pipeline.core.dist import native_bf16

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_run_writes_every_section_to_results_md_and_json(tmp_path):
    assert main(["--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "results.json").read_text())
    md = (tmp_path / "RESULTS.md").read_text()
    assert set(report["sections"]) == set(SECTIONS)
    assert {"cpu", "cores", "torch", "date"} <= set(report["machine"])
    assert report["quick"] and "--quick" in report["command"]
    assert "ERROR" not in md
    sec = {name: s["figures"] for name, s in report["sections"].items()}
    assert sec["ceiling"]["cpu_fp32_gflops"] > 0
    for size in ("paper", "default"):
        for alloc in ("glibc default", "keep freed"):
            fig = sec["pretrain"][f"{size}|{alloc}|fp32"]
            assert fig["samples_per_s"] > 0 and 0 < fig["mfu"] and fig["peak_rss_mb"] > 0
        assert sec["pretrain"][f"{size}|keep_freed_speedup"] > 0
    assert sec["pretrain"]["paper|keep freed|bf16"]["samples_per_s"] > 0
    for key in ("batch 8|fp32", "batch 8|bf16", "batch 32|fp32"):
        assert sec["tune"][key]["samples_per_s"] > 0
    for precision in ("fp32", "bf16"):
        assert sec["eval"][f"features|{precision}"]["samples_per_s"] > 0
    assert sec["eval"]["features_bf16_speedup"] > 0
    assert "bf16 / fp32" in md
    assert sec["eval"]["knn"]["identical"] is True
    assert sec["eval"]["probe"]["paper_epoch_s_xsub"] > 0
    assert sec["preprocess"]["parse"]["mb_per_s"] > 0
    assert sec["preprocess"]["large"]["stored"] == sec["preprocess"]["generate"]["linked_files"]
    assert sec["preprocess"]["peak_growth"] > 0
    for title in ("Matrix-product ceiling", "MAMP pretraining", "STARS tuning", "kNN",
                  "Preprocessing"):
        assert title in md


def test_only_one_section_keeps_the_others_from_the_previous_results(tmp_path):
    kept = {"figures": {"x": 1}, "rows": [], "notes": [], "date": "earlier"}
    (tmp_path / "results.json").write_text(json.dumps({"sections": {"tune": kept}}))
    assert main(["--quick", "--only", "ceiling", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["sections"]["tune"] == kept
    assert report["sections"]["ceiling"]["figures"]["cpu_fp32_gflops"] > 0
    assert "## 1. Matrix-product ceiling" in (tmp_path / "RESULTS.md").read_text()


def test_full_runs_plan_bf16_jobs_only_where_bf16_has_native_kernels(tmp_path):
    """A paper-size bf16 job on an AVX2 CPU (a scalar bf16 loop) would take hours."""
    native = native_bf16(torch.device("cpu"))
    assert bf16_measurable(quick=False) == native and bf16_measurable(quick=True)
    full = run.plan(list(SECTIONS), quick=False, workdir=tmp_path)
    assert any("bf16" in job.key for job in full) == native
    assert any("bf16" in job.key for job in run.plan(list(SECTIONS), True, tmp_path))


def test_bf16_targets_read_not_run_on_a_cpu_without_native_bf16():
    ceil = {"cpu_fp32_gflops": 120.0, "cpu_bf16_gflops": 1.1,
            "machine": {"cpu_isa": "AVX2", "native_bf16": False}}
    row = run._speedup_row("features: bf16 / fp32 samples/s", {"samples_per_s": 4.0}, None,
                           2.0, {}, ceil)
    assert (row["target"], row["pass"], row["not_run"]) == (">= 2.0x", None, True)
    assert "AVX2) has no native bf16 kernels" in row["value"] and "1.1 GFLOP/s" in row["value"]
    measured = run._speedup_row("f", {"samples_per_s": 4.0}, {"samples_per_s": 9.0}, 2.0, {},
                                ceil)
    assert (measured["pass"], "not_run" in measured) == (True, False)


def test_flops_at_paper_size_match_the_reference():
    flops = mamp_flops_per_sample(paper_model(), 0.9)
    assert abs(flops["train"] / 37.6e9 - 1) < 0.05
    assert abs(flops["decoder_fraction"] - 0.84) < 0.01
    assert flops["train"] == 3 * flops["forward"] == 3 * (flops["encoder"] + flops["decoder"])
    assert (flops["tokens"], flops["kept"]) == (750, 74)


def test_gpu_check_without_cuda_says_so_in_one_line_and_exits_0(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--out",
                          str(tmp_path / "GPU.md")], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines() == [out.stdout.strip()]
    assert "no CUDA device" in out.stdout and not (tmp_path / "GPU.md").exists()
