"""The preprocess stage as a new user runs it: default params, tracking on (a real MLflow SQLite
store), a raw folder of valid files mixed with malformed ones. It finishes; every valid file is
stored; each bad file is counted under its category and listed with its message, in
metrics/preprocess.json and in MLflow; nothing prints a traceback."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from pipeline.core.config import SynthConfig
from pipeline.data.store import Store
from pipeline.data.synthetic import synth
from tests.data.bad_inputs import write_corpus

ROOT = Path(__file__).resolve().parents[2]
SMALL = dataclasses.replace(SynthConfig(), base_classes=4, novel_classes=2, performers=3,
                            setups=1, cameras=2, min_frames=20, max_frames=40)


@pytest.mark.slow
def test_stage_over_valid_and_malformed_files_with_tracking_on(tmp_path):
    raw = tmp_path / "raw"
    summary = synth.generate(SMALL, raw, workers=1)  # with the default damaged files
    assert summary["damaged_files"] == 3
    expected = Counter({"truncated": 1, "bad_token": 1, "wrong_joint_count": 1})
    bad = [str(raw / synth.file_name(1, 1, 0, r, a)) for r, a in ((1, 1), (1, 2), (1, 3))]
    # the malformed NTU files of the corpus, renamed into the synthetic classes (performer 99)
    for i, case in enumerate(c for c in write_corpus(tmp_path / "corpus") if not c.valid):
        if case.fmt != "ntu":
            continue
        suffix = ".gz" if case.path.name.endswith(".gz") else ""
        dst = raw / (synth.file_name(1, 1, 99, i + 1, i % 6 + 1) + suffix)
        if case.path.is_symlink():
            dst.symlink_to(case.path.readlink())
        else:
            shutil.copy(case.path, dst)
        bad.append(str(dst))
        expected[case.category] += 1
    os.mkfifo(raw / synth.file_name(1, 1, 98, 1, 1))  # reading it would block forever
    bad.append(str(raw / synth.file_name(1, 1, 98, 1, 1)))
    expected["not_a_file"] += 1

    params = yaml.safe_load((ROOT / "params.yaml").read_text())  # the defaults
    params["data"]["raw_dir"] = str(raw)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    proc = subprocess.run([sys.executable, str(ROOT / "stages" / "preprocess.py"), "--out",
                           "store", "--metrics", "metrics/preprocess.json"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr

    m = json.loads((tmp_path / "metrics" / "preprocess.json").read_text())
    assert sum(m["samples"].values()) == len(Store.open(tmp_path / "store")) == summary["files"]
    assert m["skipped"] == {"count": len(bad), **expected}
    assert sorted(i["file"] for i in m["issues"]) == sorted(bad)
    for issue in m["issues"]:
        line = f":{issue['line']}" if issue["line"] else ""
        assert issue["message"].startswith(f"{issue['file']}{line}: ") and "\n" not in issue[
            "message"] and len(issue["message"]) < len(issue["file"]) + 160, issue

    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([client.get_experiment_by_name("stars").experiment_id])
    assert run.info.status == "FINISHED"
    assert {k: v for k, v in run.data.metrics.items() if k.startswith("skipped.")} == {
        f"skipped.{k}": v for k, v in m["skipped"].items()}
    logged = Path(client.download_artifacts(run.info.run_id, "preprocess.json", tmp_path))
    assert json.loads(logged.read_text())["issues"] == m["issues"]
