"""Assemble the run's report: `reports/report.html` (self-contained, images inlined as base64
PNG) and `reports/report.md` (images beside it in `reports/figures/`), written atomically.

Usage (stage `report`)::

    html = build_report(root, params.report, root / "reports")
    print(attach_to_mlflow(root, params.tracking, root / "reports"))

Every section is always present: when a source is missing (a stage not run yet, no DVC
repository, no MLflow store) the section says "not available: <why>" instead.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.config import Params, ReportConfig, TrackingConfig, load_params
from pipeline.core.io import atomic_dir, atomic_write_text
from pipeline.report import figures
from pipeline.report.published import benchmark_name, published, sources
from pipeline.report.render import (
    DASH,
    Block,
    Code,
    Image,
    Section,
    Table,
    Text,
    key_values,
    render_html,
    render_markdown,
)
from pipeline.report.sources import (
    Unavailable,
    dvc_experiments,
    evaluate_run,
    git_commit,
    mlflow_runs,
    open_store,
    read_csv,
    read_features,
    read_json,
)

MODELS = ("mamp", "stars")
MODEL_NAMES = {"mamp": "MAMP", "stars": "STARS"}

EPISODIC = ("fewshot_5way_1shot_proto_mean", "fewshot_5way_1shot_proto_ci95")
# Metrics shown per DVC experiment, read from metrics/evaluate.json.
EXPERIMENT_METRICS = ("linear_top1", "knn_top1_k1", "fewshot_knn_k1")
FRAMES_PER_STRIP = 8
# Provenance tables: metrics/<file> -> what its caption adds.
PROVENANCE_FILES = {"preprocess.json": " (the data accounting of the preprocess stage)",
                    "pretrain.json": "", "tune.json": " (accuracies as fractions)",
                    "timing.json": " (timings, throughputs and sizes per stage; not DVC metrics)"}
# evaluate.py and tune.py store accuracies (and the chance level) as fractions; shown in %.
PERCENT = 100.0


# --------------------------------------------------------------------------- context


@dataclasses.dataclass(frozen=True)
class Context:
    """What every section builder reads."""

    root: Path
    params: Params
    cfg: ReportConfig
    meta: dict | None          # store meta.json, None when there is no store yet
    evaluation: dict | None    # metrics/evaluate.json
    finetune: dict | None      # metrics/finetune.json


def _not_available(why: object) -> Text:
    return Text(f"not available: {why}")


# --------------------------------------------------------------------------- helpers


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return DASH
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def _class_names(ctx: Context, n: int) -> list[str]:
    """Class names from the store; 'class i' for labels beyond them (or without a store)."""
    names = list((ctx.meta or {}).get("class_names", []))
    return names + [f"class {i}" for i in range(len(names), n)]


# --------------------------------------------------------------------------- sections


Cell = tuple[float | None, str]   # (value in %, for the delta row; what the table shows)


def _pct(value: object) -> Cell:
    v = None if value is None else PERCENT * float(value)
    return v, _fmt(v)


def _result_columns(ctx: Context) -> list[tuple[str, Callable[[str], Cell], str]]:
    """The paper's table: (header, our cell of a model, published key) per protocol."""
    ev, ft = ctx.evaluation or {}, ctx.finetune or {}
    fewshot_on = ev.get("fewshot", {}).get("enabled", True)
    sel = "_testsel" if ev.get("select") == "test" else ""   # evaluate.py's key suffix

    def evaluated(key: str) -> Callable[[str], Cell]:
        return lambda m: _pct(ev.get(m, {}).get(key + sel))

    def finetuned(protocol: str) -> Callable[[str], Cell]:
        return lambda m: _pct(ft.get(m, {}).get(protocol, {}).get("top1"))

    def semi(fraction: str) -> Callable[[str], Cell]:
        def cell(m: str) -> Cell:
            runs = ft.get(m, {}).get("semi", {}).get(fraction)
            if runs is None:
                return None, DASH
            mean, std = PERCENT * runs["top1_mean"], PERCENT * runs["top1_std"]
            return mean, f"{mean:.1f} ± {std:.1f}"
        return cell

    def fewshot(key: str, ci: str | None = None) -> Callable[[str], Cell]:
        def cell(m: str) -> Cell:
            if not fewshot_on:
                return None, "off"
            value, text = _pct(ev.get(m, {}).get(key + sel))
            if ci is not None and value is not None:
                text = f"{text} ± {_fmt(_pct(ev[m].get(ci + sel))[0])}"
            return value, text
        return cell

    fractions = ft.get("label_fractions", ctx.params.finetune.label_fractions)
    return [("linear", evaluated("linear_top1"), "linear"),
            ("kNN k=1", evaluated("knn_top1_k1"), "knn_k1"),
            ("fine-tune", finetuned("full"), "finetune"),
            *((f"semi {100 * f:g}%", semi(f"{f:g}"), f"semi_{f:g}") for f in fractions),
            ("transfer", finetuned("transfer"), "transfer"),
            ("few-shot (kNN k=1, novel classes)", fewshot("fewshot_knn_k1"), "fewshot"),
            ("5-way 1-shot (episodic, ±95% CI)", fewshot(*EPISODIC), "")]


def _results(ctx: Context) -> list[Block]:
    if ctx.evaluation is None and ctx.finetune is None:
        raise Unavailable("metrics/evaluate.json not found, nor metrics/finetune.json (run "
                          "the evaluate and finetune stages)")
    ev, ft = ctx.evaluation or {}, ctx.finetune or {}
    columns = _result_columns(ctx)
    source, bench = ctx.params.data.source, ctx.params.data.benchmark
    paper = published(source, bench)
    cells = {m: [get(m) for _, get, _ in columns] for m in MODELS}
    rows = []
    for m in MODELS:
        rows.append([f"{MODEL_NAMES[m]} (ours)", *(text for _, text in cells[m])])
        label = f"{MODEL_NAMES[m]} (paper)"
        if label in paper:
            rows.append([label, *(_fmt(paper[label].get(pub)) if pub else DASH
                                  for _, _, pub in columns)])
    rows.append(["delta (STARS − MAMP)", *(
        _fmt(None if a is None or b is None else b - a, signed=True)
        for (a, _), (b, _) in zip(cells["mamp"], cells["stars"]))])
    df = pd.DataFrame(rows, columns=["model", *(h for h, _, _ in columns)])

    probe = {"cached": "the linear probe is fitted on cached centre-crop features (fast "
                       "protocol, not the paper's 100-epoch augmented probe)",
             "paper": "the linear probe follows the paper's protocol (DESIGN.md section 4)"}
    mode = ev.get("probe_mode", "unknown")
    name = benchmark_name(source, bench)
    selection = {
        "test": ("TEST-SELECTED: the probe epoch and the tuned checkpoint with the best test "
                 "accuracy, the public release's reporting (metrics *_testsel)"),
        "val": ("probe epoch and tuned checkpoint picked on validation splits of train (no "
                "test-set model selection)"),
    }.get(ev.get("select"), "last epoch (no test-set model selection)")
    notes = [(f"Top-1 accuracy (%) on {name}, test split, {selection}; "
              f"{probe.get(mode, f'probe mode {mode!r}')}.")]
    if ev.get("chance") is not None:
        notes.append(f"Chance level: {PERCENT * float(ev['chance']):.1f}%.")
    if ctx.evaluation is None:
        notes.append("Linear, kNN and few-shot are empty: metrics/evaluate.json not found.")
    if ctx.finetune is None:
        notes.append("Fine-tune, semi and transfer are empty: metrics/finetune.json not found "
                     "(run the finetune stage).")
    else:
        notes.append(f"Fine-tune: encoder and head trained end to end for {ft.get('epochs')} "
                     f"epochs on the labelled train split; semi: on a class-stratified "
                     f"fraction of it, mean ± std over {len(ft.get('seeds', []))} subset "
                     f"seeds.")
        target = ft.get("transfer_target")
        if target:
            notes.append(f"Transfer: fine-tuned on {_target_name(target)} "
                         f"({target['classes']} classes, chance "
                         f"{PERCENT * ft['chance']['transfer']:.1f}%) from the encoders "
                         f"trained on {name}.")
        missing = [p for p in ("full", "semi", "transfer") if p not in ft.get("protocols", [])]
        if missing:
            notes.append(f"Not run (finetune.protocols): {', '.join(missing)}.")
    status = ev.get("fewshot", {})
    if status and not status.get("enabled", True):
        notes.append(f"Few-shot was off: {status.get('reason', 'eval.fewshot: off')}.")
    if source == "synthetic":
        notes.append("No published numbers exist for the synthetic dataset; ours only.")
    elif source in ("npz", "pyskl"):
        notes.append(f"The dataset behind an imported {source} file is not recorded, so no "
                     "published numbers are shown (see DESIGN.md section 5).")
    elif not paper:
        notes.append(f"No published numbers exist for {name}; ours only.")
    else:
        notes.append("Published numbers: " + "; ".join(sources(source, bench)) + ". An empty "
                     "cell: no published number we could check.")
    return [Table(df, " ".join(notes))]


def _target_name(target: dict) -> str:
    name = benchmark_name(target["source"], target["benchmark"])
    if "synthetic" in target.get("raw_dir", ""):   # written by stage synthesize_target
        return f"the synthetic target in the {name} layout"
    return name


def _param(value: object) -> str:
    """A parameter as written in params.yaml (pandas turned ints into floats beside NaN)."""
    if isinstance(value, float):
        return DASH if np.isnan(value) else f"{value:g}"
    return str(value)


def _experiments(ctx: Context) -> list[Block]:
    df = dvc_experiments(ctx.root)
    all_params = [c for c in df.columns if c.startswith("params.")]
    # Commits from before params.yaml existed have no parameters: they differ in nothing.
    with_params = df[all_params].notna().any(axis=1)
    params = [c for c in all_params
              if df.loc[with_params, c].map(_param).nunique() > 1]
    metrics = [c for c in (*(f"metrics.evaluate.{m}.{k}" for k in EXPERIMENT_METRICS
                             for m in MODELS),
                           *(f"metrics.finetune.{m}.full.top1" for m in MODELS))
               if c in df.columns]
    table = df[["experiment", "rev", *params, *metrics]].copy()
    for c in params:
        table[c] = table[c].map(_param)
    for c in metrics:
        table[c] = [_fmt(None if pd.isna(v) else PERCENT * float(v)) for v in table[c]]
    table.columns = [c.removeprefix("params.").removeprefix("metrics.evaluate.")
                     .removeprefix("metrics.") for c in table.columns]
    blocks: list[Block] = [Text(f"{len(df)} rows from `dvc exp show` (workspace, baseline "
                                "commits and their experiments).")]
    if not params:
        blocks.append(Text("All listed experiments share the same parameters."))
    if not metrics:
        blocks.append(Text("No evaluate or finetune metrics are recorded for these "
                           "experiments yet."))
    shown = [what for what, cols in (("parameters that differ between experiments", params),
                                     ("top-1 accuracy (%) of each model", metrics)) if cols]
    blocks.append(Table(table, " and ".join(shown).capitalize() + "." if shown else ""))
    return blocks


def _curve(path: Path, column: str, scale: float) -> pd.DataFrame:
    """(epoch, value x scale) of one CSV column, epochs without a value dropped."""
    df = read_csv(path, ["epoch", column])[["epoch", column]].rename(columns={column: "value"})
    df = df.dropna()
    if df.empty:
        raise Unavailable(f"{path.name} has no {column} values")
    return df.assign(value=scale * df["value"])


def _curves(ctx: Context) -> list[Block]:
    plots = ctx.root / "plots"
    specs: list[tuple[str, str, dict[str, tuple[Path, str]]]] = [
        ("MAMP pretraining loss", "loss", {"MAMP": (plots / "pretrain/loss.csv", "loss")}),
        ("STARS tuning loss", "loss", {"STARS": (plots / "tune/curves.csv", "loss")}),
        ("STARS validation kNN", "top-1 (%)", {"STARS": (plots / "tune/curves.csv", "val_knn")}),
        ("linear probe (train split)", "top-1 (%)",
         {MODEL_NAMES[m]: (plots / f"evaluate/{m}_probe_curve.csv", "train_acc") for m in MODELS}),
    ]
    panels, missing = [], []
    for title, ylabel, lines in specs:
        got = {}
        for label, (path, column) in lines.items():
            try:
                got[label] = _curve(path, column, 1.0 if ylabel == "loss" else PERCENT)
            except Unavailable as exc:
                missing.append(f"{title} ({label}): {exc}")
        if got:
            panels.append((title, got, ylabel))
    if not panels:
        raise Unavailable("; ".join(missing))
    blocks: list[Block] = [Image("curves", figures.to_png(figures.curves(panels)),
                                 "Training curves per epoch.")]
    blocks += [_not_available(m) for m in missing]
    return blocks


def _tsne(ctx: Context) -> list[Block]:
    panels, captions = [], []
    for model in MODELS:
        feats, labels = read_features(ctx.root / "features" / f"{model}_test.npz")
        keep = figures.balanced_subsample(labels, ctx.cfg.tsne_per_class, ctx.cfg.seed)
        xy = figures.tsne(feats[keep], ctx.cfg.seed)
        m = (ctx.evaluation or {}).get(model, {})
        scores = ", ".join(f"{name} {m[key]:.3f}" for name, key in
                           (("NMI", "nmi"), ("ARI", "ari"), ("silhouette", "silhouette"))
                           if m.get(key) is not None) or "cluster scores not available"
        panels.append((f"{MODEL_NAMES[model]}: {scores}", xy, labels[keep].astype(int)))
        captions.append(f"{MODEL_NAMES[model]} {scores}")
    n_classes = max(int(shown.max()) for _, _, shown in panels) + 1
    fig = figures.tsne_pair(panels, _class_names(ctx, n_classes))
    caption = (f"t-SNE of test features (L2-normalised; up to {ctx.cfg.tsne_per_class} per "
               f"class, seed {ctx.cfg.seed}), coloured by class. Cluster scores of all test "
               "features (metrics/evaluate.json): " + "; ".join(captions) + ".")
    return [Image("tsne", figures.to_png(fig), caption)]


def _confusion(ctx: Context) -> list[Block]:
    df = read_csv(ctx.root / "plots/evaluate/stars_confusion.csv", ["actual", "predicted"])
    actual, predicted = df["actual"], df["predicted"]
    if actual.dtype.kind in "iu" and predicted.dtype.kind in "iu":  # label codes
        names_all = _class_names(ctx, int(max(actual.max(), predicted.max())) + 1)
    else:  # class names
        actual, predicted = actual.astype(str), predicted.astype(str)
        names_all = list(dict.fromkeys([*_class_names(ctx, 0), *sorted({*actual, *predicted})]))
        code = {name: i for i, name in enumerate(names_all)}
        actual, predicted = actual.map(code), predicted.map(code)
    labels = np.union1d(actual.unique(), predicted.unique()).astype(int)
    matrix = pd.crosstab(actual, predicted).reindex(
        index=labels, columns=labels, fill_value=0).to_numpy()
    names = [names_all[i] for i in labels]
    support = matrix.sum(axis=1)
    accuracy = PERCENT * np.diag(matrix) / np.maximum(support, 1)
    chance = (ctx.evaluation or {}).get("chance")
    chance = None if chance is None else PERCENT * float(chance)
    worst = np.argsort(accuracy, kind="stable")[:5]
    return [
        Image("confusion", figures.to_png(figures.confusion(matrix, names)),
              f"STARS linear probe confusion matrix on the test split ({len(df)} samples), "
              "rows normalised to the actual class."),
        Image("per_class", figures.to_png(figures.per_class(accuracy, names, chance)),
              "STARS linear probe per-class top-1 accuracy (from the confusion matrix)."),
        Text("Hardest classes: " + ", ".join(f"{names[i]} {accuracy[i]:.1f}%" for i in worst)
             + "."),
    ]


def _data_picture(ctx: Context) -> list[Block]:
    store = open_store(ctx.root / ctx.params.data.processed_dir)
    index = store.index
    rng = np.random.default_rng(ctx.cfg.seed)
    # Test samples when there are any; one per class first, since distinct actions tell more.
    test = (index["split"] == "test").to_numpy()
    pool = rng.permutation(np.flatnonzero(test) if test.any() else np.arange(len(index)))
    _, first = np.unique(index["label"].to_numpy()[pool], return_index=True)
    picks = np.concatenate([pool[np.sort(first)], np.delete(pool, first)])[:ctx.cfg.stick_samples]
    names = _class_names(ctx, int(index["label"].max()) + 1)
    titles = [f"{index['name'].iat[i]}: {names[int(index['label'].iat[i])]}" for i in picks]
    samples = [(f"{title} ({index['length'].iat[i]} frames)", np.asarray(store.sample(int(i))))
               for title, i in zip(titles, picks)]
    return [Image("skeletons", figures.to_png(figures.stick_strips(samples, FRAMES_PER_STRIP)),
                  f"{len(samples)} samples from the packed store ({'; '.join(titles)}), "
                  f"{FRAMES_PER_STRIP} evenly spaced frames each, x-y projection (metres); "
                  "actor 1 blue, actor 2 orange.")]


def _provenance(ctx: Context) -> list[Block]:
    blocks: list[Block] = []
    try:
        blocks.append(Text(f"Git commit: {git_commit(ctx.root)}"))
    except Unavailable as exc:
        blocks.append(_not_available(f"git commit: {exc}"))
    if ctx.meta is None:
        blocks.append(_not_available(f"dataset fingerprint: no store meta.json under "
                                     f"{ctx.params.data.processed_dir}"))
    else:
        keys = ("dataset", "benchmark", "fingerprint", "source_fingerprint", "frames_shape")
        blocks.append(Table(key_values({k: ctx.meta.get(k) for k in keys}),
                            "Dataset (store meta.json)."))
    for name, caption in PROVENANCE_FILES.items():
        try:
            blocks.append(Table(key_values(read_json(ctx.root / "metrics" / name)),
                                f"metrics/{name}{caption}."))
        except Unavailable as exc:
            blocks.append(_not_available(f"metrics/{name}: {exc}"))
    try:
        run = evaluate_run(ctx.root, ctx.params.tracking, ctx.evaluation)
        blocks.append(Text(f"Results from MLflow run {run.info.run_id} ({run.info.run_name}); "
                           "this report is attached to it under report/."))
    except Unavailable as exc:
        blocks.append(_not_available(f"MLflow evaluate run: {exc}"))
    try:
        runs = mlflow_runs(ctx.root, ctx.params.tracking)
        latest = runs.drop_duplicates("stage")[["stage", "run_id", "run_name", "start"]]
        blocks.append(Table(latest.astype(str),
                            f"Latest finished MLflow run per stage ({len(runs)} finished runs "
                            f"in experiment {ctx.params.tracking.experiment!r})."))
    except Unavailable as exc:
        blocks.append(_not_available(f"MLflow runs: {exc}"))
    blocks.append(Text("Parameters (params.yaml):"))
    blocks.append(Code((ctx.root / "params.yaml").read_text()))
    return blocks


SECTIONS: tuple[tuple[str, str, Callable[[Context], list[Block]]], ...] = (
    ("results", "Results", _results),
    ("experiments", "DVC experiments", _experiments),
    ("curves", "Training curves", _curves),
    ("tsne", "Feature space (t-SNE)", _tsne),
    ("confusion", "STARS linear probe: confusion and per-class accuracy", _confusion),
    ("data", "The data", _data_picture),
    ("provenance", "Provenance", _provenance),
)

# --------------------------------------------------------------------------- entry points


def build_sections(root: Path, cfg: ReportConfig) -> list[Section]:
    """Every section, each either filled or saying why its source is not available."""
    params = load_params(root / "params.yaml")
    meta = evaluation = finetune = None
    try:
        meta = read_json(root / params.data.processed_dir / "meta.json")
    except Unavailable:
        pass  # sections that need the store say so themselves
    try:
        evaluation = read_json(root / "metrics" / "evaluate.json")
    except Unavailable:
        pass
    try:
        finetune = read_json(root / "metrics" / "finetune.json")
    except Unavailable:
        pass
    ctx = Context(root=root, params=params, cfg=cfg, meta=meta, evaluation=evaluation,
                  finetune=finetune)
    sections = []
    for anchor, title, builder in SECTIONS:
        try:
            blocks = builder(ctx)
        except Unavailable as exc:
            blocks = [_not_available(exc)]
        sections.append(Section(anchor, title, blocks))
    return sections


def build_report(root: Path, cfg: ReportConfig, out_dir: Path) -> Path:
    """Write `out_dir/report.html`, `out_dir/report.md` and `out_dir/figures/*.png`;
    returns the HTML path."""
    root, out_dir = Path(root).resolve(), Path(out_dir)
    sections = build_sections(root, cfg)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    subtitle = f"Generated {now} from {root}."
    with atomic_dir(out_dir / "figures") as tmp:
        for block in (b for s in sections for b in s.blocks if isinstance(b, Image)):
            (tmp / f"{block.name}.png").write_bytes(block.png)
    atomic_write_text(out_dir / "report.md", render_markdown(sections, subtitle))
    atomic_write_text(out_dir / "report.html", render_html(sections, subtitle))
    return out_dir / "report.html"


def attach_to_mlflow(root: Path, tracking: TrackingConfig, out_dir: Path) -> str:
    """Log the report and its figures under `report/` of the evaluate run that produced the
    metrics it shows (the run id in metrics/evaluate.json's provenance).

    Best effort: returns one line saying what was attached to which run, or why nothing was.
    """
    if not tracking.enabled:
        return "report not attached to MLflow: tracking.enabled is false"
    root = Path(root).resolve()
    try:
        evaluation = read_json(root / "metrics" / "evaluate.json")
        run = evaluate_run(root, tracking, evaluation)
    except Unavailable as exc:
        return f"report not attached to MLflow: {exc}"
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from pipeline.core.tracking import tracking_uri

    client = MlflowClient(tracking_uri=tracking_uri(tracking, root))
    run_id = run.info.run_id
    attached = []
    try:
        for name in ("report.html", "report.md"):
            client.log_artifact(run_id, str(out_dir / name), "report")
            attached.append(name)
        pngs = sorted((out_dir / "figures").glob("*.png"))
        client.log_artifacts(run_id, str(out_dir / "figures"), "report/figures")
        attached.append(f"{len(pngs)} figures")
    except (MlflowException, OSError) as exc:
        done = ", ".join(attached) or "nothing"
        return f"report partly attached to MLflow run {run_id} ({done}); then failed: {exc}"
    return (f"attached {', '.join(attached)} to MLflow run {run_id} ({run.info.run_name}) "
            "under report/")
