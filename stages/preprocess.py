"""DVC stage `preprocess`: raw skeletons -> packed, memory-mappable store."""

import argparse
from pathlib import Path

from pipeline.core.io import atomic_write_json
from pipeline.core.stage import stage_context
from pipeline.data.preprocess import preprocess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="store folder")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON")
    args = parser.parse_args()
    with stage_context("preprocess", outputs=(args.out, args.metrics)) as (params, tracker):
        metrics = preprocess(params.data, params.preprocess, args.out)
        atomic_write_json(args.metrics, metrics)
        tracker.log_metrics(metrics)
        tracker.log_artifact(args.metrics)


if __name__ == "__main__":
    main()
