"""`make bench`: throughput, utilisation and memory figures -> benchmarks/RESULTS.md and
benchmarks/results.json (both written atomically).

Usage::

    .venv/bin/python -m benchmarks.run                      # everything (< 15 min, 2 CPU cores)
    .venv/bin/python -m benchmarks.run --only pretrain      # one section (+ the ceiling)
    .venv/bin/python -m benchmarks.run --quick --out /tmp/b  # tiny sizes: the smoke test

Every measurement is a job run in a subprocess of its own, so its peak RSS is its own and an
allocator variant is set in that subprocess's environment before glibc reads it. The matmul
ceiling runs in every invocation (it is the denominator of every utilisation figure). With
`--only`, the other sections of an existing results.json in `--out` are kept as they were.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import bf16_measurable, cpu_pressure
from pipeline.core.io import atomic_write_json, atomic_write_text

SECTIONS = ("ceiling", "pretrain", "tune", "eval", "preprocess")
PRECISIONS = ("fp32", "bf16")
BF16_TRAIN_SPEEDUP, BF16_FEATURES_SPEEDUP = 1.5, 2.0   # targets: bf16 / fp32 samples/s
KNN_TARGET_S = 0.5                                     # NTU-60 X-Sub, 2 cores
TRIED = Path(__file__).with_name("TRIED.md")           # hand-written: profile, what was tried
# glibc told to keep freed memory instead of returning it to the OS (DESIGN.md section 7).
KEEP_FREED = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "68719476736"}
ALLOCATORS = {"glibc default": {}, "keep freed": KEEP_FREED}
JOB_TIMEOUT_S = 600
REPO = Path(__file__).resolve().parents[1]

# Published figures on this machine (DESIGN.md section 7).
PUB_TUNE_SAMPLES_S = (0.27, 0.49)          # batch 8
PUB_TUNE_PEAK_GB = (9.5, 21.9)             # batch 8; batch 32 does not fit in 24 GB
PUB_PARSE_MB_S = 23.8                      # CTR-GCN parser, one core
PUB_PRETRAIN = {"glibc default": "1.0-1.5 samples/s, 22-32% MFU",
                "keep freed": "2.2-2.5 samples/s, 47-53% MFU"}
NTU120_FILES = 114_480


@dataclass(frozen=True)
class Job:
    """One measurement: `func` ("module:function") called with `kwargs` in a subprocess."""

    section: str
    key: str
    func: str
    kwargs: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)


def plan(sections: list[str], quick: bool, workdir: Path) -> list[Job]:
    """The jobs of `sections`, ceiling first; allocator variants alternate round by round
    so that both see the same drift of a shared machine."""
    jobs = [Job("ceiling", "ceiling", "benchmarks.ceiling:run", {"quick": quick})]
    rounds = range(1 if quick else 2)
    precisions = PRECISIONS if bf16_measurable(quick) else ("fp32",)
    if "pretrain" in sections:
        for size in ("paper", "default"):
            # bf16 next to fp32 with the faster allocator; fp32 with both allocators
            variants = [(n, "fp32") for n in ALLOCATORS] + (
                [("keep freed", "bf16")] if size == "paper" and "bf16" in precisions else [])
            for _ in rounds:
                for name, precision in variants:
                    jobs.append(Job("pretrain", f"{size}|{name}|{precision}",
                                    "benchmarks.training:pretrain",
                                    {"size": size, "repeats": 2 if quick else 4, "quick": quick,
                                     "precision": precision}, ALLOCATORS[name]))
    if "tune" in sections:
        # batch 8 in both precisions, alternating round by round; batch 32 fp32 once
        variants = [(8, 3, p) for _ in rounds for p in precisions] + [(32, 2, "fp32")]
        for batch, repeats, precision in variants:
            jobs.append(Job("tune", f"batch {batch}|{precision}", "benchmarks.training:tune",
                            {"batch": batch, "repeats": 2 if quick else repeats,
                             "quick": quick, "precision": precision}))
    if "eval" in sections:
        for _ in rounds:
            for precision in precisions:
                jobs.append(Job("eval", f"features|{precision}", "benchmarks.evaluation:features",
                                {"quick": quick, "precision": precision}))
        for name in ("knn", "probe"):
            jobs.append(Job("eval", name, f"benchmarks.evaluation:{name}", {"quick": quick}))
    if "preprocess" in sections:
        distinct, linked = (8, 20) if quick else (1000, 10_000)
        work = str(workdir)
        jobs += [
            Job("preprocess", "generate", "benchmarks.preprocessing:generate",
                {"workdir": work, "distinct": distinct, "linked": linked}),
            Job("preprocess", "parse", "benchmarks.preprocessing:parse",
                {"workdir": work, "distinct": distinct}),
            Job("preprocess", "small", "benchmarks.preprocessing:preprocess",
                {"workdir": work, "files": distinct, "repeats": 1 if quick else 3}),
            Job("preprocess", "large", "benchmarks.preprocessing:preprocess",
                {"workdir": work, "files": linked, "repeats": 1 if quick else 2}),
        ]
    return jobs


def run_job(job: Job, scratch: Path) -> dict[str, Any]:
    """Run `job` in a fresh interpreter; its result dict plus its peak RSS, or {"error"}."""
    out = scratch / f"job{time.monotonic_ns()}.json"
    env = {k: v for k, v in os.environ.items() if k not in KEEP_FREED} | job.env
    cmd = [sys.executable, "-m", "benchmarks.run", "--job", job.func,
           "--kwargs", json.dumps(job.kwargs), "--result", str(out)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, check=False, env=env, cwd=REPO, capture_output=True,
                              text=True, timeout=JOB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {JOB_TIMEOUT_S} s"}
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {tail}"}
    result = json.loads(out.read_text())
    result["job_wall_s"] = time.perf_counter() - start
    return result


def _child(func: str, kwargs: str, result: str) -> None:
    """Inside the job's subprocess: call the function, add its peak RSS, write the JSON."""
    from benchmarks.common import peak_rss_mb

    module, name = func.split(":")
    out = getattr(importlib.import_module(module), name)(**json.loads(kwargs))
    out["peak_rss_mb"] = peak_rss_mb()
    atomic_write_json(result, out)


# --------------------------------------------------------------------------- summaries


def _row(figure: str, value: str, target: str = "-", ok: bool | None = None) -> dict:
    return {"figure": figure, "value": value, "target": target, "pass": ok}


def _not_run(figure: str, target: str, ceil: dict) -> dict:
    """A bf16 target that this CPU cannot measure: its bf16 products have no native kernels."""
    return {**_row(figure, f"not run: this CPU ({ceil['machine']['cpu_isa']}) has no native "
                           f"bf16 kernels, its bf16 matmul runs at {ceil['cpu_bf16_gflops']:.1f} "
                           f"GFLOP/s against {ceil['cpu_fp32_gflops']:.0f} in float32 "
                           "(section 1); fp32 is the faster precision here", target),
            "not_run": True}


def _gb(mb: float) -> str:
    return f"{mb / 1024:.2f} GB"


def _percent(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.0f}%"


def _errors(results: dict[str, list[dict]]) -> list[dict]:
    return [_row(key, f"ERROR {r['error']}", ok=False)
            for key, runs in results.items() for r in runs if "error" in r]


def summarise_ceiling(res: dict[str, list[dict]]) -> tuple[dict, list[dict], list[str]]:
    r = res["ceiling"][0]
    rows = [_row(f"float32 matmul {r['cpu_matmul_n']}^3, CPU, "
                 f"{r['machine']['torch_threads']} threads",
                 f"{r['cpu_fp32_gflops']:.1f} GFLOP/s", "reference about 175 GFLOP/s")]
    native = "native kernels" if r["machine"]["native_bf16"] else "NO native kernels"
    rows.append(_row(f"bf16 matmul {r['cpu_bf16_matmul_n']}^3, CPU, {native} (what "
                     "`precision: bf16` can reach)", f"{r['cpu_bf16_gflops']:.1f} GFLOP/s"))
    for key, label in (("gpu_bf16_gflops", "bf16 matmul 8192^3, GPU"),
                       ("gpu_fp32_gflops", "float32 matmul 8192^3, GPU")):
         if key in r:
             rows.append(_row(label, f"{r[key]:.0f} GFLOP/s"))
    return r, rows, ["Median of 5 products after 2 warm-up ones; 2 n^3 FLOPs each."]


def summarise_pretrain(res: dict[str, list[dict]], ceil: dict
                       ) -> tuple[dict, list[dict], list[str]]:
    ceiling = ceil["cpu_fp32_gflops"]
    figures: dict[str, Any] = {}
    rows = []
    for key, runs in res.items():
        runs = [r for r in runs if "error" not in r]
        if not runs:
            continue
        size, alloc, precision = key.split("|")
        times = [t for r in runs for t in r["times"]]
        step = statistics.median(times)
        samples_s = runs[0]["batch"] / step
        gflops = samples_s * runs[0]["train_gflop_per_sample"]
        here = statistics.median(c for r in runs for c in r["ceiling_here_gflops"])
        fig = {"size": size, "allocator": alloc, "precision": precision,
               "env": KEEP_FREED if ALLOCATORS[alloc] else {},
               "batch": runs[0]["batch"], "step_s": step, "steps_timed": len(times),
               "samples_per_s": samples_s, "gflop_per_s": gflops, "mfu": gflops / ceiling,
               "train_gflop_per_sample": runs[0]["train_gflop_per_sample"],
               "decoder_fraction": runs[0]["decoder_fraction"],
               **{p: statistics.median(r[p] for r in runs)
                  for p in ("forward_s", "backward_s", "optimizer_s")},
               "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
               "ceiling_here_gflops": [c for r in runs for c in r["ceiling_here_gflops"]],
               "mfu_vs_ceiling_here": gflops / here,
               "model": runs[0]["model"]}
        figures[key] = fig
        paper = size == "paper" and precision == "fp32"
        rows.append(_row(
            f"{size} size, batch {fig['batch']}, allocator: {alloc}, {precision}",
            f"{samples_s:.2f} samples/s, {gflops:.1f} GFLOP/s = {fig['mfu']:.1%} MFU "
            f"({fig['mfu_vs_ceiling_here']:.1%} of the in-job ceiling) "
            f"(step {step:.2f} s: forward {fig['forward_s']:.2f}, backward "
            f"{fig['backward_s']:.2f}, AdamW {fig['optimizer_s']:.2f}); peak RSS "
            f"{_gb(fig['peak_rss_mb'])}",
            f"MFU >= 60% (published {PUB_PRETRAIN[alloc]})" if paper else "-",
            fig["mfu"] >= 0.60 if paper else None))
    for size in ("paper", "default"):
        a, b = (figures.get(f"{size}|{n}|fp32") for n in ALLOCATORS)
        if a and b:
            speedup = a["step_s"] / b["step_s"]
            figures[f"{size}|keep_freed_speedup"] = speedup
            faster = "keep freed" if speedup > 1 else "glibc default"
            rows.append(_row(f"{size} size: allocator comparison",
                             f"{faster} is faster by {max(speedup, 1 / speedup) - 1:.0%}"))
    fp32, bf16 = figures.get("paper|keep freed|fp32"), figures.get("paper|keep freed|bf16")
    if fp32 and (bf16 or not ceil["machine"]["native_bf16"]):
        rows.append(_speedup_row("paper size, keep freed: bf16 / fp32 samples/s", fp32, bf16,
                                 BF16_TRAIN_SPEEDUP, figures, ceil))
    paper = next(iter(figures.values()), None)
    notes = [
        ("Samples/s = batch / median step time over all timed steps of both rounds (each round "
         "a fresh subprocess, 1 warm-up + 4 timed steps; allocator variants alternate)."),
        ("A step is what `pipeline.training.loop.fit` runs: forward under the loop's "
         "`autocast(device, precision)`, zero_grad, backward, AdamW step, with fit's CPU "
         "deterministic-kernels flag; random inputs (N, 2, T, 25, 3). bf16 and fp32 jobs "
         "alternate, so both see the same load."),
        ("FLOPs (matmuls only, 2mkn): per block over S tokens of width W, MLP hidden H = 4W: "
         "qkv 6SW^2 + QK^T 2S^2W + AV 2S^2W + proj 2SW^2 + MLP 4SWH. Forward per sample = "
         "actors x (embed 2L(t_patch*3)D + depth x block(K, D) + decoder_embed 2KD Dd + "
         "decoder_depth x block(L, Dd) + pred 2L Dd (t_patch*3)), L = 750, K = int(L (1 - "
         "mask)) = 74 at paper size; training = 3 x forward "
         "(`benchmarks.common.mamp_flops_per_sample`)."),
        f"MFU = achieved GFLOP/s / the float32 matmul ceiling of this run ({ceiling:.1f}).",
    ]
    if paper:
        notes.append(f"Paper size: {paper['train_gflop_per_sample']:.1f} GFLOP per sample "
                     f"trained, {paper['decoder_fraction']:.0%} of it in the decoder.")
    return figures, rows + _errors(res), notes


def summarise_tune(res: dict[str, list[dict]], ceil: dict
                   ) -> tuple[dict, list[dict], list[str]]:
    ceiling = ceil["cpu_fp32_gflops"]
    figures, rows = {}, []
    for key, runs in res.items():
        runs = [r for r in runs if "error" not in r]
        if not runs:
            continue
        r = {**runs[0], "step_s": statistics.median(t for r in runs for t in r["times"]),
             "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
             "ceiling_here_gflops": [c for r in runs for c in r["ceiling_here_gflops"]]}
        precision = r.get("precision", "fp32")
        samples_s = r["batch"] / r["step_s"]
        gflops = samples_s * r["train_gflop_per_sample"]
        here = statistics.median(r["ceiling_here_gflops"])
        fig = {**r, "samples_per_s": samples_s, "gflop_per_s": gflops, "mfu": gflops / ceiling,
               "mfu_vs_ceiling_here": gflops / here}
        figures[key] = fig
        speed_target = 2 * PUB_TUNE_SAMPLES_S[1]
        if r["batch"] == 8:
            mem_target = PUB_TUNE_PEAK_GB[0] / 4
            target = (f">= {speed_target:.2f} samples/s (2 x {PUB_TUNE_SAMPLES_S[1]}) and peak "
                      f"<= {mem_target:.2f} GB (9.5 / 4)")
        else:
            mem_target = 24 / 4
            target = (f">= {speed_target:.2f} samples/s and peak <= {mem_target:.0f} GB "
                      f"(published: does not fit in 24 GB)")
        rows.append(_row(
            f"paper size, batch {r['batch']}, {precision}",
            f"{samples_s:.2f} samples/s, {gflops:.1f} GFLOP/s = {fig['mfu']:.1%} MFU "
            f"({fig['mfu_vs_ceiling_here']:.1%} of the in-job ceiling) (step "
            f"{r['step_s']:.2f} s: forward {r['forward_s']:.2f}, backward {r['backward_s']:.2f},"
            f" AdamW {r['optimizer_s']:.2f}); peak RSS {_gb(r['peak_rss_mb'])}",
            target, samples_s >= speed_target and r["peak_rss_mb"] / 1024 <= mem_target))
    fp32, bf16 = figures.get("batch 8|fp32"), figures.get("batch 8|bf16")
    if fp32 and (bf16 or not ceil["machine"]["native_bf16"]):
        row = _speedup_row("batch 8: bf16 / fp32 samples/s, peak RSS bf16 vs fp32", fp32, bf16,
                           BF16_TRAIN_SPEEDUP, figures, ceil)
        if bf16:
            higher = bf16["peak_rss_mb"] > fp32["peak_rss_mb"]
            row["value"] += f"; peak {_gb(bf16['peak_rss_mb'])} vs {_gb(fp32['peak_rss_mb'])}"
            row["target"] += " and peak no higher"
            row["pass"] = row["pass"] and not higher
        rows.append(row)
    notes = [
        ("STARS step as `pipeline.tune` runs it: `tuning_param_groups` freezes blocks 0-3 and "
         "the embeddings, one encoder forward serves both views, NNCLR head (predictor 4096), "
         "queue 32,768, gradient clipping 3, AdamW; median of 3 (batch 8) or 2 (batch 32) steps "
         "after 1 warm-up; batch 8 over 2 rounds, fp32 and bf16 alternating."),
        ("Published: 0.27-0.49 samples/s and 9.5-21.9 GB peak at batch 8 (targets use the best "
         "published figure). Peak = the job's peak RSS (CPU; whole process, torch included)."),
        ("FLOPs per sample: encoder forward over all 750 tokens x 2 actors + head + queue "
         "similarity 2KD, plus backward = 2 x forward of the tuned blocks and the head only."),
    ]
    return figures, rows + _errors(res), notes


def summarise_eval(res: dict[str, list[dict]], ceil: dict
                   ) -> tuple[dict, list[dict], list[str]]:
    ceiling = ceil["cpu_fp32_gflops"]
    figures, rows = {}, []
    for precision in PRECISIONS:
        runs = [r for r in res.get(f"features|{precision}", []) if "error" not in r]
        if not runs:
            continue
        f = runs[0]
        step = statistics.median(t for r in runs for t in r["times"])
        samples_s = f["batch"] / step
        gflops = samples_s * f["forward_gflop_per_sample"]
        figures[f"features|{precision}"] = {**f, "step_s": step, "samples_per_s": samples_s,
                                            "gflop_per_s": gflops, "mfu": gflops / ceiling,
                                            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}
        rows.append(_row(f"feature extraction, paper size, batch {f['batch']}, inference_mode, "
                         f"{precision}",
                         f"{samples_s:.2f} samples/s, {gflops:.1f} GFLOP/s = "
                         f"{gflops / ceiling:.1%} MFU; peak RSS {_gb(f['peak_rss_mb'])}"))
    if "features|fp32" in figures and ("features|bf16" in figures
                                       or not ceil["machine"]["native_bf16"]):
        rows.append(_speedup_row("feature extraction: bf16 / fp32 samples/s",
                                 figures["features|fp32"], figures.get("features|bf16"),
                                 BF16_FEATURES_SPEEDUP, figures, ceil,
                                 key="features_bf16_speedup"))
    if "error" not in res["knn"][0]:
        k = res["knn"][0]
        figures["knn"] = {**k, "target_s": KNN_TARGET_S, "speedup_vs_sklearn": k["sklearn_s"] /
                          k["ours_s"]}
        floor = min(k["product_s"], key=k["product_s"].get)
        rows.append(_row(
            f"kNN k=1, bank {k['bank']:,} x {k['dim']}, queries {k['queries']:,}: ours "
            f"(`knn_predict`, screening 'auto' = {k['auto']} here, + exact re-score)",
            f"{k['ours_s']:.2f} s ({k['product_gflop'] / k['ours_s']:.0f} GFLOP/s effective)",
            f"<= {KNN_TARGET_S} s on 2 cores", k["ours_s"] <= KNN_TARGET_S))
        rows += [_row(f"kNN: ours with {p} screening", f"{sec:.2f} s")
                 for p, sec in k["screening_s"].items() if p != k["auto"]]
        rows += [
            _row("kNN: one plain product queries @ bank^T of the same shape, " +
                 " / ".join(k["product_s"]),
                 " / ".join(f"{sec:.2f} s ({k['product_gflop'] / sec:.0f} GFLOP/s)"
                            for sec in k["product_s"].values()) +
                 f"; ours = {k['ours_s'] / k['product_s'][floor]:.2f} x the {floor} product "
                 "(the floor)"),
            _row("kNN: scikit-learn KNeighborsClassifier(metric='cosine', algorithm='brute')",
                 f"{k['sklearn_s']:.2f} s (ours {k['sklearn_s'] / k['ours_s']:.1f}x faster)",
                 "reference about 12 s"),
            _row("kNN: predictions identical (" + " = ".join(k["screening_s"]) +
                 " screening = the correctly rounded scikit-learn reference)",
                 ("yes" if k["identical"] else "NO") + f"; plain scikit-learn differs on "
                 f"{k['sklearn_blas_differences']} near-tie queries decided by its BLAS rounding",
                 "identical", k["identical"]),
        ]
    if "error" not in res["probe"][0]:
        p = res["probe"][0]
        figures["probe"] = p
        rows += [
            _row(f"linear probe, cached: {p['cached_epochs']} epochs on {p['cached_train']:,} "
                 f"features, batch {p['cached_batch']}", f"{p['cached_s']:.1f} s"),
            _row("linear probe, paper mode: one epoch of NTU-60 X-Sub train "
                 f"({p['paper_epochs']} epochs in all), EXTRAPOLATED",
                 f"{p['paper_epoch_s_xsub'] / 3600:.1f} h per epoch, "
                 f"{p['paper_total_s_xsub'] / 86400:.1f} days for {p['paper_epochs']} epochs "
                 f"(measured: {p['paper_samples']} samples, batch {p['paper_batch']}, "
                 f"{p['paper_measured_s']:.1f} s)"),
        ]
    notes = [
        ("Features: `Encoder.forward_features` under inference_mode and the loop's autocast, "
         "median over 2 rounds of 3 batches after 1 warm-up, fp32 and bf16 alternating; "
         "FLOPs = actors x (embed + depth x block(750, 256))."),
        ("kNN: clustered features (60 class means + noise of equal norm, as crowded as "
         "trained features), 60 labels; ours median of 3 (the screening precisions with "
         "native kernels here alternating), scikit-learn median of 2; the same arrays go to "
         "all."),
        ("Paper-mode probe: `probe_paper` through `fit` (train transform in the main process, "
         "frozen paper-size encoder, checkpoint per epoch) on a small random store; time per "
         "sample x 40,091 samples. An extrapolation, not a measurement of a full epoch."),
    ]
    return figures, rows + _errors(res), notes


def _speedup_row(figure: str, fp32: dict, bf16: dict | None, target: float, figures: dict,
                 ceil: dict, key: str = "") -> dict:
    """bf16 / fp32 samples/s against `target`; the ratio is also stored in `figures`. No bf16
    figure: this CPU has no native bf16 kernels, so the job was not run (`plan`)."""
    if bf16 is None:
        return _not_run(figure, f">= {target}x", ceil)
    ratio = bf16["samples_per_s"] / fp32["samples_per_s"]
    figures[key or f"{figure}"] = ratio
    return _row(figure, f"{ratio:.2f}x ({bf16['samples_per_s']:.2f} vs "
                        f"{fp32['samples_per_s']:.2f} samples/s)", f">= {target}x",
                ratio >= target)


def summarise_preprocess(res: dict[str, list[dict]], ceil: dict
                         ) -> tuple[dict, list[dict], list[str]]:
    figures, rows = {}, []
    g = res["generate"][0]
    if "error" not in g:
        figures["generate"] = g
        rows.append(_row("generated NTU-like files (production writer)",
                         f"{g['distinct_files']:,} distinct, {g['bytes'] / 1e6:.0f} MB, "
                         f"{g['mean_kb']:.0f} kB/file, frames {g['frames_min']}-"
                         f"{g['frames_max']} (mean {g['frames_mean']:.1f}), "
                         f"{g['bodies_per_frame']:.2f} bodies/frame, "
                         f"{g['two_body_files']:.0%} files with 2+ bodies; "
                         f"{g['linked_files']:,} names hard-linked to them",
                         "30-300 frames, mean near 80, 1-2 bodies"))
    p = res["parse"][0]
    if "error" not in p:
        figures["parse"] = p
        rows.append(_row("parse (`pipeline.data.ntu.parse_skeleton`), one core",
                         f"{p['mb_per_s']:.1f} MB/s, {p['files_per_s']:.0f} files/s",
                         f">= 80 MB/s per core (reference parser {PUB_PARSE_MB_S} MB/s)",
                         p["mb_per_s"] >= 80))
    totals = {}
    for key in ("small", "large"):
        r = res[key][0]
        if "error" in r:
            continue
        total_mb = r["main_peak_rss_mb"] + r["workers"] * r["worker_peak_rss_mb"]
        totals[key] = total_mb
        figures[key] = {**r, "total_peak_mb": total_mb}
        rows.append(_row(
            f"full preprocess (parse + denoise + store), {r['files']:,} files, "
            f"{r['workers']} workers",
            f"{r['files_per_s']:.0f} files/s ({r['preprocess_s']:.1f} s, {r['stored']} stored, "
            f"{r['skipped']} skipped); peak RSS main {_gb(r['main_peak_rss_mb'])} + "
            f"{r['workers']} x worker {_gb(r['worker_peak_rss_mb'])} = {_gb(total_mb)}",
            "peak < 2 GB", total_mb < 2048))
    if "large" in figures:
        r = figures["large"]
        rows.append(_row(f"NTU-120 ({NTU120_FILES:,} files) on 2 cores, EXTRAPOLATED from "
                         f"{r['files']:,} files", f"{r['ntu120_extrapolated_s'] / 60:.1f} min",
                         "< 10 min", r["ntu120_extrapolated_s"] < 600))
    if len(totals) == 2:
        growth = totals["large"] / totals["small"]
        figures["peak_growth"] = growth
        rows.append(_row("peak memory independent of file count (10x the files)",
                         f"peak x {growth:.2f}", "x <= 1.25", growth <= 1.25))
    notes = [
        ("Files: synthetic performances (`pipeline.data.synthetic.synth`) resampled to log-normal lengths "
         "and written by `pipeline.data.synthetic.ntu_writer.format_skeleton`; the large set hard-links "
         "the distinct files under distinct valid NTU names, so it is read from the page cache."),
        "Parse: the distinct files held in memory, median of 3 passes, one process.",
        ("Preprocess: `pipeline.data.preprocess.preprocess` with 2 workers (median of 3 runs at "
         "1,000 files, 2 at 10,000); peak = main process + workers x largest worker peak (an "
         "upper bound). NTU-120 time = time per file at 10,000 files x 114,480."),
    ]
    return figures, rows + _errors(res), notes


SUMMARIES = {"pretrain": summarise_pretrain, "tune": summarise_tune, "eval": summarise_eval,
             "preprocess": summarise_preprocess}
TITLES = {"ceiling": "1. Matrix-product ceiling", "pretrain": "2. MAMP pretraining step",
          "tune": "3. STARS tuning step", "eval": "4. Evaluation: features, kNN, linear probe",
          "preprocess": "5. Preprocessing"}


# --------------------------------------------------------------------------- report


def render(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Command: `{report['command']}`" + (" (QUICK: tiny sizes, not figures)"
                                              if report["quick"] else ""),
        (f"Machine: {m['cpu']} ({m['cpu_isa']}, native bf16 kernels: "
         f"{'yes' if m['native_bf16'] else 'no'}), {m['cores']} cores (torch "
         f"{m['torch_threads']} threads), "
         f"GPU: {m['gpu'] or 'none'}; torch {m['torch']}, Python {m['python']}"),
        f"Date: {report['date']}; wall time {report['wall_s']:.0f} s",
        "",
        ("CPU pressure (Linux PSI `some` avg60: % of time a runnable task waited for a CPU) at "
         f"start / end: {' / '.join(_percent(p) for p in report['cpu_pressure_avg60'])}."),
        ("The machine is shared and its speed swings several-fold with the load of others: each "
         "training job also measures a short 2048^3 matmul before and after its steps "
         "(`ceiling_here_gflops` in results.json); utilisation is given against both ceilings."),
    ]
    for name in SECTIONS:
        sec = report["sections"].get(name)
        if sec is None:
            continue
        lines += ["", f"## {TITLES[name]}", "", f"Measured {sec['date']}.", "",
                  "| figure | value | target | result |", "|---|---|---|---|"]
        for r in sec["rows"]:
            result = ("NOT RUN" if r.get("not_run")
                      else {True: "PASS", False: "FAIL", None: "-"}[r["pass"]])
            lines.append(f"| {r['figure']} | {r['value']} | {r['target']} | {result} |")
        lines += [""] + [f"- {n}" for n in sec["notes"]]
    if TRIED.is_file():
        lines += ["", TRIED.read_text().strip()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--only", action="append", choices=SECTIONS,
                        help="run this section only (repeatable); the ceiling always runs")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent,
                        help="folder for RESULTS.md and results.json")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--kwargs", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.job:
        _child(args.job, args.kwargs, args.result)
        return 0

    sections = list(args.only) if args.only else list(SECTIONS)
    command = " ".join([".venv/bin/python -m benchmarks.run", *(argv or sys.argv[1:])])
    start, pressure = time.perf_counter(), [cpu_pressure()]
    scratch = Path(tempfile.mkdtemp(prefix="stars-bench-"))
    try:
        raw: dict[str, dict[str, list[dict]]] = {}
        for job in plan(sections, args.quick, scratch / "work"):
            print(f"[bench] {job.section}: {job.key} {job.env or ''}", flush=True)
            result = run_job(job, scratch)
            if "error" in result:
                print(f"[bench]   {result['error']}", flush=True)
            raw.setdefault(job.section, {}).setdefault(job.key, []).append(result)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    ceiling_raw = raw["ceiling"]["ceiling"][0]
    if "error" in ceiling_raw:
        print(f"[bench] the ceiling job failed: {ceiling_raw['error']}", file=sys.stderr)
        return 1
    date = ceiling_raw["machine"]["date"]
    results_path = args.out / "results.json"
    report = {"sections": {}}
    if args.only and results_path.is_file():
        report = json.loads(results_path.read_text())    # keep the sections not re-run
    figures, rows, notes = summarise_ceiling(raw["ceiling"])
    new = {"ceiling": {"figures": figures, "rows": rows, "notes": notes}}
    for name in sections:
        if name in SUMMARIES:
            figures, rows, notes = SUMMARIES[name](raw[name], ceiling_raw)
            new[name] = {"figures": figures, "rows": rows, "notes": notes,
                         "ceiling_gflops": ceiling_raw["cpu_fp32_gflops"]}
    for name, sec in new.items():
        sec.update(date=date, raw=raw[name])       # every job's own output, for re-analysis
    report["sections"].update(new)
    pressure.append(cpu_pressure())
    report.update(command=command, machine=ceiling_raw["machine"], date=date,
                  quick=args.quick, wall_s=time.perf_counter() - start,
                  cpu_pressure_avg60=pressure)
    atomic_write_json(results_path, report)
    atomic_write_text(args.out / "RESULTS.md", render(report))
    print(f"[bench] wrote {args.out / 'RESULTS.md'} and {results_path} "
          f"in {report['wall_s']:.0f} s", flush=True)
    failed = [r for sec in new.values() for r in sec["rows"] if r["value"].startswith("ERROR")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
