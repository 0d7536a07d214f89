"""Command line: `python -m pipeline <command> ...` (also installed as `stars`).

Commands: check, synth, inspect, import-weights, export-weights, import-data, export-data,
preset-args, worker. Heavy modules are
imported inside each command so `--help` is instant. User errors print one line and exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from pipeline.core.config import SynthConfig, load_params, parse_params
from pipeline.core.errors import cli_exit_code


def _add_synth_overrides(parser: argparse.ArgumentParser) -> None:
    """One optional flag per SynthConfig field (default: params.yaml's `synth` group)."""
    for name, field in SynthConfig.__pydantic_fields__.items():
        parser.add_argument("--" + name.replace("_", "-"), dest=f"synth_{name}",
                            type=field.annotation, default=None,
                            help=field.description or f"default: params.yaml synth.{name}")


def cmd_check(args: argparse.Namespace) -> None:
    from pipeline.cli.check import check

    print(check(Path(args.params), args.preset))


def cmd_synth(args: argparse.Namespace) -> None:
    from pipeline.data.synthetic.synth import generate

    base = load_params(args.params).synth
    overrides = {f.name: getattr(args, f"synth_{f.name}") for f in dataclasses.fields(base)
                 if getattr(args, f"synth_{f.name}") is not None}
    cfg = parse_params({"synth": {**dataclasses.asdict(base), **overrides}}).synth
    summary = generate(cfg, Path(args.out), workers=args.workers)
    print(json.dumps(summary, indent=2, default=str))


def cmd_inspect(args: argparse.Namespace) -> None:
    from pipeline.data.inspect import summarize

    print(summarize(Path(args.file)))


def cmd_import_weights(args: argparse.Namespace) -> None:
    from pipeline.cli.weights import import_weights

    params = load_params(args.params)
    summary = import_weights(args.format, Path(args.src), Path(args.dst), params.model,
                             predictor_dim=params.tune.predictor_dim)
    print(json.dumps(summary, indent=2, default=str))


def cmd_export_weights(args: argparse.Namespace) -> None:
    from pipeline.cli.weights import export_mamp, export_stars

    (export_mamp if args.format == "mamp" else export_stars)(Path(args.src), Path(args.dst))
    print(f"wrote {args.dst} ({args.format} release layout)")


def cmd_import_data(args: argparse.Namespace) -> None:
    from pipeline.data.interop import import_file

    summary = import_file(args.format, Path(args.src), Path(args.out), args.benchmark)
    print(json.dumps(summary, indent=2, default=str))


def cmd_export_data(args: argparse.Namespace) -> None:
    from pipeline.data.interop import export_npz

    summary = export_npz(Path(args.store), Path(args.out))
    print(json.dumps(summary, indent=2, default=str))


def cmd_preset_args(args: argparse.Namespace) -> None:
    from pipeline.cli.presets import preset_args

    print(" ".join(preset_args(args.name, args.params)))


def cmd_worker(args: argparse.Namespace) -> None:
    """Node `--node-rank` (>= 1) of a multi-node training stage that DVC runs on node 0: join
    its rendezvous and train as a worker. Only node 0 writes, so this node needs node 0's
    params.yaml and data/processed but none of its outputs (README, Scaling out)."""
    from pipeline.core import dist
    from pipeline.core.errors import ConfigError
    from pipeline.core.launch import ensure_fast_allocator, maybe_relaunch, run_identity
    from pipeline.core.tracking import NullTracker

    params = load_params(args.params)
    nnodes = params.dist.nnodes
    if nnodes == 1:
        raise ConfigError(f"dist.nnodes: 1 in {args.params} leaves no node to work on; copy "
                          "node 0's params.yaml here")
    if not 0 < args.node_rank < nnodes:
        raise ConfigError(f"--node-rank: {args.node_rank} is invalid: must be 1 to {nnodes - 1} "
                          f"(dist.nnodes {nnodes}); node 0 runs DVC")
    ensure_fast_allocator(sys.argv)
    maybe_relaunch(params.dist, sys.argv, args.stage, args.node_rank)
    dist.init(params.dist, agree_on=run_identity(args.stage, params))
    # The output paths of dvc.yaml: only global rank 0 (on node 0) reads or writes them.
    data = Path(params.data.processed_dir)
    try:
        if args.stage == "pretrain":
            from pipeline.pretrain import run_pretrain

            run_pretrain(params, data, Path("models/pretrain"), Path("metrics/pretrain.json"),
                         Path("plots/pretrain"), NullTracker())
        else:
            from pipeline.tune import run_tune

            run_tune(params, data, Path("models/pretrain/last.pt"), Path("models/tune"),
                     Path("metrics/tune.json"), Path("plots/tune"), NullTracker())
    finally:
        dist.teardown()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.split("\n")[0])
    parser.add_argument("--params", default="params.yaml", help="parameters file")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="validate params.yaml (and a preset) and the raw data "
                                     "before a run; one line naming the key on failure")
    p.add_argument("--preset", default=None, help="also apply presets/<PRESET>.yaml")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("synth", help="write the procedural dataset as NTU .skeleton files")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--workers", type=int, default=2)
    _add_synth_overrides(p)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("inspect", help="one-screen summary of a raw .skeleton file")
    p.add_argument("file")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("import-weights", help="convert published MAMP/STARS weights")
    p.add_argument("--format", choices=["mamp", "stars"], required=True)
    p.add_argument("src")
    p.add_argument("dst")
    p.set_defaults(func=cmd_import_weights)

    p = sub.add_parser("export-weights", help="our checkpoint -> published MAMP/STARS layout")
    p.add_argument("--format", choices=["mamp", "stars"], required=True)
    p.add_argument("src", help="models/pretrain/last.pt (mamp) or models/tune/last.pt (stars)")
    p.add_argument("dst")
    p.set_defaults(func=cmd_export_weights)

    p = sub.add_parser("import-data", help="CTR-GCN/MAMP .npz or pyskl .pkl -> packed store")
    p.add_argument("--format", choices=["npz", "pyskl"], required=True)
    p.add_argument("src")
    p.add_argument("--out", required=True, help="store folder to write")
    p.add_argument("--benchmark", choices=["xsub", "xview", "xset"], default="xsub")
    p.set_defaults(func=cmd_import_data)

    p = sub.add_parser("export-data", help="packed store -> MAMP/STARS .npz layout")
    p.add_argument("--format", choices=["npz"], default="npz")
    p.add_argument("--store", default="data/processed")
    p.add_argument("--out", required=True, help=".npz file to write")
    p.set_defaults(func=cmd_export_data)

    p = sub.add_parser("preset-args", help="`dvc exp run` -S flags of a paper preset")
    p.add_argument("name", help="a file name in presets/, e.g. ntu60-xsub")
    p.set_defaults(func=cmd_preset_args)

    p = sub.add_parser("worker", help="train on a node other than 0 of a multi-node stage")
    p.add_argument("stage", choices=["pretrain", "tune"], help="the stage DVC runs on node 0")
    p.add_argument("--node-rank", type=int, required=True, help="this node: 1 .. dist.nnodes-1")
    p.set_defaults(func=cmd_worker)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return cli_exit_code(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
