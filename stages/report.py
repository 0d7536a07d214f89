"""DVC stage `report`: reports/report.html and reports/report.md from metrics, plots and runs."""

import argparse
from pathlib import Path

from pipeline.core.stage import stage_context
from pipeline.core.tracking import repo_root
from pipeline.report.build import attach_to_mlflow, build_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="report folder")
    args = parser.parse_args()
    with stage_context("report", outputs=(args.out,)) as (params, _tracker):
        root = repo_root()
        path = build_report(root, params.report, args.out)
        print(f"report written to {path}")
        print(attach_to_mlflow(root, params.tracking, args.out))


if __name__ == "__main__":
    main()
