"""DVC stage `report`: reports/report.html and reports/report.md from metrics, plots and runs."""

import argparse
from pathlib import Path

from pipeline.report.build import build_report
from pipeline.stage import stage_context
from pipeline.tracking import repo_root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="report folder")
    args = parser.parse_args()
    with stage_context("report") as (params, _tracker):
        path = build_report(repo_root(), params.report, args.out)
        print(f"report written to {path}")


if __name__ == "__main__":
    main()
