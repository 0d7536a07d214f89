"""`make gpu-check`: the whole pipeline and the paper-size throughput on a CUDA GPU, in fp32
and bf16 -> benchmarks/GPU.md (device, driver, torch, figures, MFU against the GPU's own
measured matmul ceiling). Without CUDA it says so in one line and exits 0.

Usage::

    .venv/bin/python -m benchmarks.gpu_check                 # full check (GPU machine)
    .venv/bin/python -m benchmarks.gpu_check --skip-pipeline # throughput only

The pipeline runs as `dvc repro` in a fresh git+DVC copy of the project (the embedded
default params.yaml, only the three `precision` keys set), so the GPU run cannot touch this
checkout's outputs; it uses `pipeline.core.dist.device()`, i.e. the GPU, by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from benchmarks.ceiling import matmul_gflops
from benchmarks.common import machine
from pipeline.core.io import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "bf16")
_COPY = ("pipeline", "stages", "presets", ".dvc", "dvc.yaml", ".dvcignore", ".gitignore",
         "pyproject.toml", "params.yaml")


def _driver() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True)
        return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown (nvidia-smi not available)"


def run_pipeline(precision: str, workdir: Path) -> dict:
    """`dvc repro` of the embedded default in a fresh copy with every precision key set."""
    repo = workdir / f"project-{precision}"
    for name in _COPY:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, repo / name)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for group in ("pretrain", "tune", "eval"):
        params[group]["precision"] = precision
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(repo), "GIT_AUTHOR_NAME": "gpu-check",
           "GIT_AUTHOR_EMAIL": "gpu-check@localhost", "GIT_COMMITTER_NAME": "gpu-check",
           "GIT_COMMITTER_EMAIL": "gpu-check@localhost",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=repo, env=env,
                          capture_output=True, text=True, check=False)
    out = {"precision": precision, "wall_s": time.perf_counter() - start,
           "ok": proc.returncode == 0}
    if not out["ok"]:
        out["error"] = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return out
    evaluate = json.loads((repo / "metrics" / "evaluate.json").read_text())
    out["delta"] = evaluate["delta"]
    return out


def throughput(precision: str) -> dict:
    """Paper-size pretrain and tune steps (batch 8) and feature extraction on the GPU."""
    from benchmarks import evaluation, training

    return {"pretrain": training.pretrain("paper", repeats=10, warmup=3, precision=precision,
                                          device="cuda"),
            "tune": training.tune(8, repeats=10, warmup=3, precision=precision, device="cuda"),
            "features": evaluation.features(precision=precision, device="cuda")}


def render(info: dict, ceilings: dict, figures: dict, pipelines: list[dict]) -> str:
    lines = ["# GPU check", "", "Command: `make gpu-check`",
             (f"Device: {info['device']}; driver {info['driver']}; torch {info['torch']} "
              f"(CUDA {info['cuda']}); date {info['date']}"), "",
             "## Matmul ceiling (8192^3)", "", "| precision | GFLOP/s |", "|---|---|"]
    lines += [f"| {p} | {g:.0f} |" for p, g in ceilings.items()]
    lines += ["", "## Paper-size throughput (batch 8; features batch 16)", "",
              "| stage | precision | samples/s | MFU vs the same precision's ceiling | peak GPU MB |",
              "|---|---|---|---|---|"]
    for precision, fig in figures.items():
        for stage, r in fig.items():
            step = r["step_s"]
            samples_s = r["batch"] / step
            flop = r.get("train_gflop_per_sample", r.get("forward_gflop_per_sample"))
            mfu = samples_s * flop / ceilings[precision]
            lines.append(f"| {stage} | {precision} | {samples_s:.1f} | {mfu:.1%} | "
                         f"{r.get('gpu_peak_mb', float('nan')):.0f} |")
    if pipelines:
        lines += ["", "## Whole pipeline, embedded default (params.yaml), on the GPU", "",
                  "| precision | dvc repro wall time | STARS - MAMP (evaluate.json delta) |",
                  "|---|---|---|"]
        for p in pipelines:
            result = (", ".join(f"{k} {v:+.3f}" for k, v in sorted(p["delta"].items()))
                      if p["ok"] else f"FAILED: {p['error']}")
            lines.append(f"| {p['precision']} | {p['wall_s']:.0f} s | {result} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-pipeline", action="store_true", help="throughput only")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("GPU.md"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(f"gpu-check: no CUDA device visible to torch {torch.__version__}; nothing to "
              "check on this machine")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = False   # fp32 means fp32 in every figure
    info = {"device": torch.cuda.get_device_name(0), "driver": _driver(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "date": machine()["date"]}
    ceilings = {"fp32": matmul_gflops(8192, torch.float32, "cuda", repeats=20),
                "bf16": matmul_gflops(8192, torch.bfloat16, "cuda", repeats=20)}
    figures = {p: throughput(p) for p in PRECISIONS}
    pipelines = []
    if not args.skip_pipeline:
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
            pipelines = [run_pipeline(p, Path(tmp)) for p in PRECISIONS]
    atomic_write_text(args.out, render(info, ceilings, figures, pipelines))
    print(f"gpu-check: wrote {args.out}")
    return 0 if all(p["ok"] for p in pipelines) else 1


if __name__ == "__main__":
    sys.exit(main())
