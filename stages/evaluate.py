"""DVC stage `evaluate`: kNN, linear probe, few-shot and cluster quality for MAMP and STARS."""

import argparse
from pathlib import Path

from pipeline.core.stage import stage_context
from pipeline.evaluate import run_evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="packed store")
    parser.add_argument("--mamp", type=Path, required=True, help="MAMP checkpoint")
    parser.add_argument("--stars", type=Path, required=True, help="STARS checkpoint")
    parser.add_argument("--features", type=Path, required=True, help="feature cache folder")
    parser.add_argument("--probe", type=Path, required=True,
                        help="paper-mode linear probe checkpoints (persistent)")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON")
    parser.add_argument("--plots", type=Path, required=True, help="plots folder")
    args = parser.parse_args()
    outputs = (args.features, args.probe, args.metrics, args.plots)
    with stage_context("evaluate", outputs=outputs) as (params, tracker):
        run_evaluate(params, args.data, args.mamp, args.stars, args.features, args.probe,
                     args.metrics, args.plots, tracker)


if __name__ == "__main__":
    main()
