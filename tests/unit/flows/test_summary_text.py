"""The nightly summary explains why ingested and newly labelled counts differ."""

from __future__ import annotations

from flows.artifacts import summary_markdown


def _summary(new_labelled):
    ing = {
        "source": "s3://captures/rig",
        "new": [f"c{i}" for i in range(138)],
        "duplicates": [],
        "quarantined": {"bad.json": "truncated"},
        "vanished": [],
        "captures": 400,
        "labelled": 370,
        "source_captures": 139,
    }
    return {
        "started": "2026-12-07 02:00 UTC",
        "headline": "no retrain",
        "ingest": ing,
        "links": {},
        "retrain": f"{new_labelled} new labelled captures",
        "new_labelled": new_labelled,
    }


def test_ingested_and_labelled_counts_are_explained():
    md = summary_markdown(_summary(118))
    assert "of the 138 new captures, 118 are labelled training/validation captures not trained on before" in md
    assert "30 unlabelled in the manifest" in md and "test split" in md and "1 quarantined" in md


def test_without_the_retrain_count_nothing_is_claimed():
    s = _summary(118)
    del s["new_labelled"]
    assert "not trained on before" not in summary_markdown(s)


def test_new_captures_are_counted_by_split():
    s = _summary(118)
    s["new_by_split"] = {"train": 80, "val": 20, "test": 20, "unlabelled": 18}
    md = summary_markdown(s)
    assert "of the 138 new captures, 100 are labelled training/validation captures, 20 labelled test" in md
    assert "18 unlabelled (waiting for a lab verdict)" in md
    assert "not trained on before: 118 (18 of them from earlier nights)" in md and "1 quarantined" in md
