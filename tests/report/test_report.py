"""`make report` on a small fake-but-real run: real store, metrics/plots/features files with
the stages' schemas, a real DVC repository with experiments, a real MLflow SQLite store."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.core.config import ReportConfig, TrackingConfig, parse_params
from pipeline.data.synthetic.skeleton_model import bone_lengths, forward_kinematics
from pipeline.report.build import SECTIONS, attach_to_mlflow, build_report
from pipeline.report.figures import balanced_subsample
from tests.conftest import write_store as write_tiny_store

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["wave", "kick", "jump", "bow"]
NOVEL = [3]
STAGES = ("preprocess", "pretrain", "tune", "evaluate")
CFG = ReportConfig(tsne_per_class=8, stick_samples=3, seed=0)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch):
    for var in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(var, raising=False)


# --------------------------------------------------------------------------- fake run


def _motion(label: int, T: int, rng: np.random.Generator) -> np.ndarray:
    """(T, 2, 25, 3): actor 1 swings one joint per class; 'bow' (label 3) has a second actor."""
    angles = np.zeros((T, 25, 3))
    t = np.linspace(0, 2 * np.pi, T)
    angles[:, [5, 13, 1, 2][label], 0] = 0.8 * np.sin(t + rng.uniform(0, 1))
    xyz, _ = forward_kinematics(angles, np.zeros((T, 3)), bone_lengths(height=1.75))
    frames = np.zeros((T, 2, 25, 3), np.float32)
    frames[:, 0] = xyz + rng.normal(0, 0.005, xyz.shape)
    if label == 3:
        frames[:, 1] = xyz + np.array([1.0, 0.0, 0.3])
    return frames


def write_store(root: Path, per_class: int = 4) -> None:
    rng = np.random.default_rng(0)
    samples = ((f"S001C001P{k:03d}R001A{label + 1:03d}", label, "train" if k % 2 else "test",
                _motion(label, int(rng.integers(20, 40)), rng))
               for label in range(len(CLASSES)) for k in range(2 * per_class))
    write_tiny_store(root / "data/processed", samples, CLASSES, NOVEL, dataset="synthetic")


def write_metrics(root: Path) -> None:
    """metrics/<stage>.json as the stages write them (accuracies as fractions)."""
    s = 0.01
    flat = {"mamp": {"knn_top1_k1": 61.0, "knn_top1_k5": 63.0, "linear_top1": 70.0,
                     "linear_top5": 95.0, "linear_mean_class_acc": 69.0, "fewshot_knn_k1": 40.0,
                     "fewshot_5way_1shot_proto_mean": 45.0, "fewshot_5way_1shot_proto_ci95": 1.5,
                     "nmi": 0.41, "ari": 0.22, "silhouette": 0.05},
            "stars": {"knn_top1_k1": 72.5, "knn_top1_k5": 74.0, "linear_top1": 73.0,
                      "linear_top5": 96.0, "linear_mean_class_acc": 72.0, "fewshot_knn_k1": 52.0,
                      "fewshot_5way_1shot_proto_mean": 55.0, "fewshot_5way_1shot_proto_ci95": 1.4,
                      "nmi": 0.63, "ari": 0.48, "silhouette": 0.21}}
    scores = ("nmi", "ari", "silhouette")
    ev = {m: {k: v if k in scores else s * v for k, v in d.items()} for m, d in flat.items()}
    ev["delta"] = {k: ev["stars"][k] - ev["mamp"][k] for k in ev["stars"]}
    ev.update(probe_mode="cached", chance=s * 100 / 3)
    ev["fewshot"] = {"enabled": True, "reason": "12 novel-class samples"}

    def run(top1: float) -> dict:
        return {"top1": s * top1, "top5": 0.99, "mean_class_acc": s * top1}

    ft = {m: {"full": run(base + 20), "transfer": run(base),
              "semi": {"0.01": {"top1_mean": s * (base - 30), "top1_std": s * 0.5},
                       "0.1": {"top1_mean": s * (base - 10), "top1_std": s * 0.25}}}
          for m, base in (("mamp", 70.0), ("stars", 71.0))}
    ft.update(chance={"full": 1 / 3, "transfer": 1 / 4}, protocols=["full", "semi", "transfer"],
              epochs=100, label_fractions=[0.01, 0.1], seeds=[0, 1, 2],
              transfer_target={"source": "pku2", "benchmark": "xsub", "classes": 4,
                               "train_samples": 8, "test_samples": 8})
    metrics = {"preprocess": {"samples": 32, "skipped": 0}, "pretrain": {"loss": 0.41},
               "tune": {"loss": 2.1, "val_knn_last": s * 70.0, "val_knn_curve": [0.6, 0.7]},
               "evaluate": ev, "finetune": ft,
               "timing": {"pretrain": {"wall_time_s": 1.5, "processes": 1}}}
    for stage, m in metrics.items():
        (root / "metrics").mkdir(exist_ok=True)
        (root / f"metrics/{stage}.json").write_text(json.dumps(m))


def write_plots_and_features(root: Path) -> None:
    """plots/<stage>/*.csv and features/<model>_<split>.npz as the stages write them."""
    rng = np.random.default_rng(1)
    epochs = np.arange(5)
    for path, df in {
        "pretrain/loss.csv": pd.DataFrame({"epoch": epochs, "loss": 1 / (1 + epochs),
                                           "lr": 1e-3}),
        "tune/curves.csv": pd.DataFrame({"epoch": epochs, "loss": 3 - 0.2 * epochs,
                                         "val_knn": [None, *(0.6 + 0.02 * epochs[1:])]}),
        **{f"evaluate/{m}_probe_curve.csv": pd.DataFrame(
            {"epoch": epochs, "loss": 1 - 0.1 * epochs, "train_acc": a + 0.01 * epochs, "lr": 0.1})
           for m, a in (("mamp", 0.6), ("stars", 0.65))},
    }.items():
        (root / "plots" / path).parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(root / "plots" / path, index=False)
    actual = np.repeat(np.arange(3), 10)
    predicted = np.where(rng.random(30) < 0.7, actual, rng.integers(0, 3, 30))
    names = np.array(CLASSES)  # evaluate.py writes class names, for DVC's confusion template
    pd.DataFrame({"actual": names[actual], "predicted": names[predicted]}).to_csv(
        root / "plots/evaluate/stars_confusion.csv", index=False)
    (root / "features").mkdir(exist_ok=True)
    labels = np.repeat(np.arange(3), 12)
    for model, spread in (("mamp", 1.0), ("stars", 0.3)):
        for split in ("train", "test"):
            feats = np.eye(3, 16)[labels] * 2 + spread * rng.normal(size=(36, 16))
            np.savez(root / f"features/{model}_{split}.npz", feats=feats.astype(np.float32),
                     labels=labels, indices=np.arange(36), key=np.array("k"))


def write_params(root: Path, **groups: dict) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump({"tune": {"epochs": 3}, **groups}))


def write_mlflow(root: Path) -> None:
    """One run per stage through the stages' own tracking facade; the evaluate stage twice,
    and metrics/evaluate.json names the first of the two (so "latest" would be wrong)."""
    from mlflow.tracking import MlflowClient

    from pipeline.core.tracking import start_run, tracking_uri

    params = parse_params({})
    # Explicit artifact root so nothing lands in the current directory.
    MlflowClient(tracking_uri(params.tracking, root)).create_experiment(
        params.tracking.experiment, artifact_location=(root / "mlruns").as_uri())
    evaluate_runs = []
    for stage in (*STAGES, "evaluate"):
        with start_run(stage, params, root) as tracker:
            tracker.log_metrics({"loss": 1.0})
            if stage == "evaluate":
                evaluate_runs.append(tracker.run_id)
    path = root / "metrics" / "evaluate.json"
    evaluation = json.loads(path.read_text())
    evaluation["provenance"] = {"mlflow_run_id": evaluate_runs[0]}
    path.write_text(json.dumps(evaluation))


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root,
                   check=True, capture_output=True)


def make_dvc_repo(root: Path) -> None:
    """A git + DVC repository whose baseline has one saved experiment with other params."""
    dvc = str(Path(sys.executable).parent / "dvc")
    (root / "dvc.yaml").write_text("params: [params.yaml]\nmetrics: [metrics/evaluate.json]\n")
    (root / ".gitignore").write_text("mlflow.db\nmlruns/\nreports/\n")
    _git(root, "init", "-q")
    subprocess.run([dvc, "init", "-q"], cwd=root, check=True, capture_output=True)
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "baseline")
    write_params(root, tune={"epochs": 7})
    subprocess.run([dvc, "exp", "save", "-q", "-n", "longer-tune"], cwd=root, check=True,
                   capture_output=True)
    write_params(root)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as mp:
        for var in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME"):
            mp.delenv(var, raising=False)
        write_params(root)
        write_store(root)
        write_metrics(root)
        write_plots_and_features(root)
        make_dvc_repo(root)
        write_mlflow(root)
    return root


# --------------------------------------------------------------------------- reading the report


class _Sections(HTMLParser):
    """Text, image sources and table rows of every <section id=...> in the report."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, dict] = {}
        self.current: dict | None = None
        self.in_title = False
        self.after_wbr = False  # a header broken by <wbr> is still one cell's text

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.after_wbr = tag == "wbr"
        if self.after_wbr:
            return
        if tag == "section":
            self.current = self.sections.setdefault(a["id"], {"text": "", "imgs": [], "rows": []})
        elif self.current is not None:
            if tag == "img":
                self.current["imgs"].append(a["src"])
            elif tag == "tr":
                self.current["rows"].append("")
            self.in_title = tag == "h2"

    def handle_endtag(self, tag):
        if tag == "section":
            self.current = None
        self.in_title = False

    def handle_data(self, data):
        if self.current is not None and not self.in_title:
            self.current["text"] += data
            if self.current["rows"] and data.strip():
                row = self.current["rows"][-1]
                self.current["rows"][-1] = (row[:-1] if self.after_wbr else row) + data.strip() + "|"
            self.after_wbr = False


def parse(html_path: Path) -> dict[str, dict]:
    p = _Sections()
    p.feed(html_path.read_text())
    return p.sections


# --------------------------------------------------------------------------- fast tests


def test_balanced_subsample_takes_at_most_per_class_of_every_class():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 7)
    keep = balanced_subsample(labels, per_class=5, seed=0)
    assert np.bincount(labels[keep]).tolist() == [5, 3, 5]
    assert np.array_equal(keep, balanced_subsample(labels, per_class=5, seed=0))


def test_missing_sources_give_a_not_available_line_in_every_section(tmp_path):
    write_params(tmp_path)
    html = build_report(tmp_path, CFG, tmp_path / "reports")
    sections = parse(html)
    assert list(sections) == [anchor for anchor, _, _ in SECTIONS]
    for anchor, s in sections.items():
        assert "not available:" in s["text"], anchor
    assert "evaluate.json not found" in sections["results"]["text"]
    assert "no packed store" in sections["data"]["text"]
    md = (tmp_path / "reports/report.md").read_text()
    assert md.count("not available:") >= len(SECTIONS)


NTU60 = {"source": "ntu60", "benchmark": "xsub", "raw_dir": "data/raw/ntu60",
         "novel_dir": "data/raw/ntu120"}


def test_results_table_is_the_papers_table_ours_beside_published(tmp_path):
    write_params(tmp_path, data=NTU60)
    write_metrics(tmp_path)
    sections = parse(build_report(tmp_path, CFG, tmp_path / "reports"))
    header = sections["results"]["rows"][0].split("|")[1:-1]
    assert header == ["linear", "kNN k=1", "fine-tune", "semi 1%", "semi 10%", "transfer",
                      "few-shot (kNN k=1, novel classes)", "5-way 1-shot (episodic, ±95% CI)"]
    rows = {r.split("|")[0]: r.split("|")[1:-1] for r in sections["results"]["rows"][1:]}
    assert list(rows) == ["MAMP (ours)", "MAMP (paper)", "STARS (ours)", "STARS (paper)",
                          "delta (STARS − MAMP)"]
    assert rows["MAMP (ours)"][:8] == ["70.0", "61.0", "90.0", "40.0 ± 0.5", "60.0 ± 0.2",
                                       "70.0", "40.0", "45.0 ± 1.5"]
    assert rows["STARS (ours)"][2:6] == ["91.0", "41.0 ± 0.5", "61.0 ± 0.2", "71.0"]
    assert rows["delta (STARS − MAMP)"][:8] == ["+3.0", "+11.5", "+1.0", "+1.0", "+1.0", "+1.0",
                                                "+12.0", "+10.0"]
    # published cells from the READMEs / papers; unknown ones stay empty, never guessed
    assert rows["STARS (paper)"][:8] == ["87.1", "79.9", "93.0", "–", "–", "–", "63.5", "–"]
    assert rows["MAMP (paper)"][:3] == ["84.9", "–", "93.0"]
    text = sections["results"]["text"]
    assert "NTU-60 X-Sub" in text and "Chance level: 33.3%" in text
    assert "STARS README" in text and "MAMP README" in text
    assert "Transfer: fine-tuned on PKU-MMD II X-Sub (4 classes, chance 25.0%)" in text


def test_results_table_says_when_fewshot_was_off_and_why(tmp_path):
    write_params(tmp_path, data={**NTU60, "novel_dir": ""}, eval={"fewshot": False})
    write_metrics(tmp_path)
    ev = json.loads((tmp_path / "metrics/evaluate.json").read_text())
    ev["fewshot"] = {"enabled": False, "reason": "eval.fewshot: off; data.novel_dir is not set"}
    (tmp_path / "metrics/evaluate.json").write_text(json.dumps(ev))
    (tmp_path / "metrics/finetune.json").unlink()
    sections = parse(build_report(tmp_path, CFG, tmp_path / "reports"))
    rows = {r.split("|")[0]: r.split("|")[1:-1] for r in sections["results"]["rows"][1:]}
    assert rows["STARS (ours)"][-2:] == ["off", "off"]
    assert rows["STARS (ours)"][2] == "–"
    text = sections["results"]["text"]
    assert "Few-shot was off: eval.fewshot: off; data.novel_dir is not set." in text
    assert "metrics/finetune.json not found" in text


def test_confusion_matrix_accepts_label_codes_as_well_as_class_names(tmp_path):
    write_params(tmp_path)
    (tmp_path / "plots/evaluate").mkdir(parents=True)
    pd.DataFrame({"actual": [0, 0, 1, 1], "predicted": [0, 1, 1, 1]}).to_csv(
        tmp_path / "plots/evaluate/stars_confusion.csv", index=False)
    sections = parse(build_report(tmp_path, CFG, tmp_path / "reports"))
    assert len(sections["confusion"]["imgs"]) == 2
    assert "Hardest classes: class 0 50.0%, class 1 100.0%." in sections["confusion"]["text"]


# --------------------------------------------------------------------------- full run (slow)


@pytest.mark.slow
def test_full_run_report_fills_every_section_with_both_models(full_run):
    out = full_run / "reports"
    html = build_report(full_run, CFG, out)
    sections = parse(html)
    assert list(sections) == [anchor for anchor, _, _ in SECTIONS]
    for anchor, s in sections.items():
        assert "not available" not in s["text"], (anchor, s["text"][:300])
        assert s["text"].strip() or s["imgs"], anchor
    rows = [r.split("|")[0] for r in sections["results"]["rows"]]
    assert {"MAMP (ours)", "STARS (ours)", "delta (STARS − MAMP)"} <= set(rows)
    assert "No published numbers exist for the synthetic dataset" in sections["results"]["text"]
    exp_rows = "\n".join(sections["experiments"]["rows"])
    assert "longer-tune" in exp_rows and "tune.epochs" in exp_rows and "7" in exp_rows
    assert "NMI 0.630" in sections["tsne"]["text"]
    assert "Hardest classes:" in sections["confusion"]["text"]
    assert "wave" in sections["data"]["text"] or "kick" in sections["data"]["text"]
    for stage in STAGES:
        assert stage in sections["provenance"]["text"]
    imgs = [src for s in sections.values() for src in s["imgs"]]
    assert len(imgs) == 5 and all(src.startswith("data:image/png;base64,") for src in imgs)
    md = (out / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", md)
    assert len(linked) == 5 and all((out / p).stat().st_size > 1000 for p in linked)
    assert not list(out.glob(".*tmp"))  # atomic writes leave no temporaries


@pytest.mark.slow
def test_attach_to_mlflow_logs_to_the_evaluate_run_named_in_the_metrics(full_run):
    from mlflow.tracking import MlflowClient

    from pipeline.core.tracking import tracking_uri

    out = full_run / "reports"
    build_report(full_run, CFG, out)
    message = attach_to_mlflow(full_run, TrackingConfig(), out)
    named = json.loads((full_run / "metrics/evaluate.json").read_text())["provenance"]
    client = MlflowClient(tracking_uri(None, full_run))
    experiment = client.get_experiment_by_name("stars")
    latest = client.search_runs([experiment.experiment_id], "tags.stage = 'evaluate'",
                                order_by=["attributes.start_time DESC"])[0]
    run_id = named["mlflow_run_id"]
    assert run_id != latest.info.run_id
    assert run_id in message and "5 figures" in message
    names = {a.path for a in client.list_artifacts(run_id, "report")}
    assert {"report/report.html", "report/report.md", "report/figures"} <= names
    assert len(client.list_artifacts(run_id, "report/figures")) == 5
    assert not client.list_artifacts(latest.info.run_id, "report")


def test_attach_to_mlflow_says_why_when_there_is_no_store(tmp_path):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/evaluate.json").write_text('{"provenance": {"mlflow_run_id": "abc"}}')
    message = attach_to_mlflow(tmp_path, TrackingConfig(), tmp_path / "reports")
    assert message.startswith("report not attached to MLflow: no MLflow store at")
    assert not (tmp_path / "mlflow.db").exists()


def test_attach_to_mlflow_says_why_when_evaluate_was_not_tracked(tmp_path):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/evaluate.json").write_text('{"provenance": {"mlflow_run_id": null}}')
    message = attach_to_mlflow(tmp_path, TrackingConfig(), tmp_path / "reports")
    assert message == ("report not attached to MLflow: metrics/evaluate.json names no MLflow "
                       "run (tracking was off when the evaluate stage ran)")


# --------------------------------------------------------------------------- browser (slow)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]

# Loads the report in a same-origin iframe and writes, into its own DOM, every image's load
# state, each section's text length, and the results table's row labels.
WRAPPER = """<!doctype html><html><body>
<iframe id="r" src="report.html" width="1200" height="900"></iframe>
<pre id="result">pending</pre>
<script>
document.getElementById("r").addEventListener("load", () => {
  const doc = document.getElementById("r").contentDocument;
  const imgs = [...doc.images].map(i => ({ok: i.complete && i.naturalWidth > 0,
                                          w: i.naturalWidth}));
  const sections = [...doc.querySelectorAll("section")].map(s => ({
    id: s.id, text: s.innerText.replace(s.querySelector("h2").innerText, "").trim().length,
    imgs: s.querySelectorAll("img").length}));
  const rows = [...doc.querySelectorAll("#results tr td:first-child")].map(td => td.innerText);
  document.getElementById("result").textContent = JSON.stringify({imgs, sections, rows});
});
</script></body></html>"""


@contextlib.contextmanager
def _serve(directory: Path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed "
                    "(apt-get install chromium)")
def test_report_renders_in_headless_chromium_with_every_image_loaded(full_run, tmp_path):
    out = full_run / "reports"
    build_report(full_run, CFG, out)
    (out / "wrapper.html").write_text(WRAPPER)
    with _serve(out) as base:
        done = _chromium(tmp_path / "profile", "--virtual-time-budget=15000", "--dump-dom",
                         f"{base}/wrapper.html")
    match = re.search(r'<pre id="result">(.*?)</pre>', done.stdout, re.DOTALL)
    assert match and match.group(1) != "pending", done.stderr[-2000:]
    result = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert len(result["imgs"]) == 5 and all(i["ok"] and i["w"] > 100 for i in result["imgs"])
    assert [s["id"] for s in result["sections"]] == [a for a, _, _ in SECTIONS]
    assert all(s["text"] > 0 or s["imgs"] > 0 for s in result["sections"])
    assert {"MAMP (ours)", "STARS (ours)"} <= set(result["rows"])

    if os.environ.get("REPORT_SCREENSHOT"):
        # The repository's own report after `make report`, else this test's fake run.
        real = REPO / "reports/report.html"
        target = real if real.is_file() else out / "report.html"
        shot = REPO / "reports/screenshot.png"
        shot.parent.mkdir(exist_ok=True)
        _chromium(tmp_path / "profile2", "--hide-scrollbars", "--window-size=1280,2000",
                  f"--screenshot={shot}", target.as_uri())
        assert shot.stat().st_size > 10_000
