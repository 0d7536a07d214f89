"""Report polish: readable cells, tables that fit the page, a t-SNE whose classes can be told
apart."""

import numpy as np
import pandas as pd

from pipeline.report.figures import tsne_pair
from pipeline.report.render import Section, Table, key_values, render_html, summarise


def test_cells_show_integers_as_integers_and_summarise_long_lists():
    assert [summarise(v) for v in (864, 0.530809462, 123768.0, True, None)] == \
        ["864", "0.5308", "123768", "true", "–"]
    assert summarise([1, 2, 25, 3]) == "[1, 2, 25, 3]"
    curve = [0.61, 0.59, 0.6, 0.65, 0.7, 0.68, 0.708]
    assert summarise(curve) == "7 values, 0.61 … 0.708 (min 0.59, max 0.708)"
    assert summarise({}) == "none"


def test_key_values_flattens_small_mappings_and_summarises_large_ones():
    skipped = {f"S001C001P001R001A{i:03d}.skeleton": "bad line" for i in range(1, 31)}
    rows = key_values({"samples": {"train": 864, "test": 864}, "frames": 123768,
                       "skipped": {"count": 30, "files": skipped}})
    assert rows.values.tolist() == [
        ["samples.train", "864"], ["samples.test", "864"], ["frames", "123768"],
        ["skipped.count", "30"],
        ["skipped.files", ("30 entries: S001C001P001R001A001.skeleton: bad line, "
                           "S001C001P001R001A002.skeleton: bad line, …")]]


def test_wide_tables_scroll_in_their_box_and_headers_break_after_dots():
    df = pd.DataFrame({"experiment": ["a"], "tune.view_mask_ratio": [0.5]})
    html = render_html([Section("x", "X", [Table(df, "a caption"), Table(df)])], "")
    assert html.count('<div class="table">') == 2
    assert "<th>tune.<wbr>view_<wbr>mask_<wbr>ratio</th>" in html
    assert html.count('<p class="caption">') == 1   # no empty caption under the second
    assert "div.table { overflow-x: auto;" in html


def _panels(n_classes: int) -> list:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(n_classes), 5)
    xy = rng.normal(size=(len(labels), 2)) + 10 * rng.normal(size=(n_classes, 2))[labels]
    return [("MAMP", xy, labels), ("STARS", xy[::-1], labels[::-1])]


def test_tsne_names_many_classes_at_their_centres_in_distinct_colours():
    names = [f"action {i}" for i in range(30)]
    fig = tsne_pair(_panels(30), names)
    for ax in fig.axes:
        assert sorted(t.get_text() for t in ax.texts) == sorted(names)
        colours = ax.collections[0].get_facecolors()
        assert len(np.unique(colours.round(3), axis=0)) == 30
    assert not fig.legends


def test_tsne_with_few_classes_has_a_legend_instead():
    fig = tsne_pair(_panels(4), ["wave", "kick", "jump", "bow"])
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["wave", "kick", "jump", "bow"]
    assert not fig.axes[0].texts
