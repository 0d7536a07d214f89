"""DVC stage `synthesize`: the procedural dataset, written as NTU .skeleton files."""

import argparse
from pathlib import Path

from pipeline.core.stage import stage_context
from pipeline.data.synthetic.synth import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="folder of .skeleton files")
    args = parser.parse_args()
    with stage_context("synthesize", outputs=(args.out,)) as (params, tracker):
        summary = generate(params.synth, args.out, workers=params.preprocess.workers)
        tracker.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})


if __name__ == "__main__":
    main()
