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
    parser.add_argument("--target", action="store_true",
                        help="the transfer target (params group `transfer`), not `data`")
    args = parser.parse_args()
    name = "preprocess_target" if args.target else "preprocess"
    with stage_context(name, outputs=(args.out, args.metrics)) as (params, tracker):
        data = params.transfer.as_data() if args.target else params.data
        metrics = preprocess(data, params.preprocess, args.out)
        atomic_write_json(args.metrics, metrics)
        tracker.log_metrics(metrics)
        tracker.log_artifact(args.metrics)


if __name__ == "__main__":
    main()
