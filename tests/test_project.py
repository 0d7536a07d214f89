"""The README, the Makefile and dvc.yaml say what the code does: every `make` target and
`python -m pipeline` command the README names exists, every metric it quotes is one the
evaluate stage writes (with the README's numbers), DVC metrics hold results only, and
`dvc plots show` has exactly the meaningful charts, each with data."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.__main__ import build_parser
from pipeline.core.config import Params, to_dict

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
MAKEFILE = (ROOT / "Makefile").read_text()
EVALUATE = json.loads((ROOT / "metrics/evaluate.json").read_text())
DVC = str(Path(sys.executable).parent / "dvc")


def test_every_make_target_in_the_readme_exists():
    targets = set(re.findall(r"^([a-z][a-z-]*):", MAKEFILE, re.MULTILINE))
    quoted = set(re.findall(r"\bmake ([a-z][a-z-]*)", README))
    assert quoted and quoted <= targets, f"README names missing targets: {quoted - targets}"


def test_every_pipeline_command_in_the_readme_exists():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    quoted = set(re.findall(r"python -m pipeline ([a-z][a-z-]*)", README))
    assert {"check", "inspect", "synth"} <= quoted <= set(sub.choices)


def test_every_param_the_readme_sets_exists():
    params = {f"{g}.{k}" for g, keys in to_dict(Params()).items() for k in keys}
    quoted = set(re.findall(r"-S ([a-z_]+\.[a-z_]+)=", README))
    quoted |= set(re.findall(r"`([a-z]+\.[a-z_]+): [^`]+`", README))
    assert quoted and quoted <= params, quoted - params


def test_metric_names_the_readme_quotes_are_written_by_evaluate():
    mlflow_names = set(re.findall(r"`((?:mamp|stars|delta)/\w+)`", README))
    assert mlflow_names, "the README quotes MLflow metric names"
    for name in mlflow_names:
        group, key = name.split("/")
        assert key in EVALUATE[group], name
    start = README.index("The columns are the report's")
    paragraph = README[start:README.index("\n\n", start)]
    keys = set(re.findall(r"`(\w+)`", paragraph))
    assert len(keys) == 7 and keys <= set(EVALUATE["stars"]), keys - set(EVALUATE["stars"])


def test_the_readme_results_table_is_metrics_evaluate_json():
    """The README's table quotes metrics/evaluate.json (percent with one decimal; cluster
    scores with three), column for column, so its headers cannot drift from the report's."""
    from pipeline.report.build import EPISODIC

    columns = ("linear_top1", "knn_top1_k1", "fewshot_knn_k1", EPISODIC[0], "nmi", "ari",
               "silhouette")
    assert "5-way 1-shot" in README and EPISODIC[0] == "fewshot_5way_1shot_proto_mean"
    for model in ("mamp", "stars"):
        row = re.search(rf"^\| {model.upper()} \|(.*)\|$", README, re.MULTILINE)
        cells = [float(c) for c in row[1].split("|")]
        m = EVALUATE[model]
        want = [round(100 * m[k], 1) for k in columns[:4]] + [round(m[k], 3) for k in columns[4:]]
        assert cells == pytest.approx(want, abs=1e-9), f"README row {model} != evaluate.json"


def test_dvc_metrics_hold_results_not_timings():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    declared = {next(iter(m)) for s in stages.values() for m in s.get("metrics", [])}
    assert declared == {"metrics/pretrain.json", "metrics/tune.json", "metrics/evaluate.json",
                        "metrics/finetune.json"}
    assert "/metrics/timing.json" in (ROOT / ".gitignore").read_text().splitlines()
    timing = re.compile(r"wall|per_s|samples|parameters|processes|batch|tokens|epochs$")
    for stage in ("pretrain", "tune"):   # what the runners write now
        src = (ROOT / f"pipeline/{stage}.py").read_text()
        results = src[src.index("    metrics"):src.index("    timing = ")]
        assert not timing.search(" ".join(re.findall(r'"(\w+)":', results))), stage


def test_make_exps_keeps_the_param_groups_of_params_yaml():
    groups = re.search(r"^PARAM_GROUPS := (.*)$", MAKEFILE, re.MULTILINE)[1].split("|")
    assert groups == list(to_dict(Params()))


def test_dvc_plots_show_draws_six_meaningful_charts_with_data():
    out = subprocess.run([DVC, "plots", "show", "--json"], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=120)
    plots = json.loads(out.stdout)["data"]
    assert set(plots) == {"MAMP pretraining loss", "STARS tuning loss", "STARS validation kNN",
                          "Linear probe training accuracy", "MAMP linear probe confusion",
                          "STARS linear probe confusion"}
    for title, (plot,) in plots.items():
        spec = plot["content"]
        assert spec["data"]["values"], f"{title} has no data"
        enc = json.dumps(spec)
        if "confusion" in title:
            assert '"field": "actual"' in enc and '"field": "predicted"' in enc
            assert {"actual", "predicted"} <= set(spec["data"]["values"][0])
        else:
            assert '"title": "epoch"' in enc, title


@pytest.mark.slow
def test_make_exps_shows_the_params_that_differ_and_the_headline_metrics(tmp_path):
    def run(*cmd: str) -> str:
        return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, check=True,
                              timeout=300).stdout

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/evaluate.json").write_text(json.dumps(EVALUATE))
    (tmp_path / "dvc.yaml").write_text("params: [params.yaml]\nmetrics: [metrics/evaluate.json]\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    run(*git, "init", "-q")
    run(DVC, "init", "-q")
    run(*git, "add", "-A")
    run(*git, "commit", "-qm", "baseline")
    params["tune"]["epochs"] = 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(DVC, "exp", "save", "-q", "-n", "short-tune")
    venv = Path(sys.executable).parent.parent
    header = run("make", "-f", str(ROOT / "Makefile"), f"VENV={venv}", "-o",
                 f"{venv}/.installed", "-s", "exps", "ARGS=--csv --no-pager").splitlines()[0]
    headline = ["knn_top1_k1", "linear_top1", "fewshot_knn_k1", "fewshot_5way_1shot_proto_mean"]
    assert header.split(",") == ["Experiment", "rev", "Created",
                                 *(f"{m}.{k}" for m in ("mamp", "stars") for k in headline),
                                 "tune.epochs"]
