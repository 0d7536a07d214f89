"""DVC stages `synthesize` and `synthesize_target`: the procedural dataset, written as NTU
.skeleton files, or (`--layout pku`) the transfer target in the PKU-MMD phase II layout."""

import argparse
from pathlib import Path

from pipeline.core.stage import stage_context
from pipeline.data.synthetic.pku_writer import generate_pku
from pipeline.data.synthetic.synth import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="folder of .skeleton files")
    parser.add_argument("--layout", choices=("ntu", "pku"), default="ntu")
    args = parser.parse_args()
    name = "synthesize" if args.layout == "ntu" else "synthesize_target"
    with stage_context(name, outputs=(args.out,)) as (params, tracker):
        if args.layout == "pku":
            summary = generate_pku(params.synth, params.transfer, args.out)
        else:
            summary = generate(params.synth, args.out, workers=params.preprocess.workers)
        tracker.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})


if __name__ == "__main__":
    main()
