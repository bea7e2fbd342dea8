from flows.artifacts import evaluation_rows, recall_rows, summary_line

NEW = {
    "balanced_accuracy": 0.6,
    "ceiling_accuracy": 0.61,
    "ceiling_lower": 0.61,
    "ceiling_upper": 0.62,
    "ceiling_lower_se": 0.01,
    "ceiling_upper_se": 0.012,
    "ceiling_position": "0.010 below its lower edge",
    "per_class": {"Al1050": {"recall": 0.5, "support": 3}},
    "ceiling_recall": {"Al1050": 0.6},
}
OLD = {"balanced_accuracy": 0.6, "ceiling_accuracy": 0.59, "per_class": {"Al1050": {"recall": 0.5, "support": 3}}}


def test_the_nightly_summary_gives_the_bracket_and_where_a_model_stands():
    new, old = evaluation_rows({"new": NEW, "old": OLD}, None)
    assert new["physics bracket"] == "0.610-0.620 ± 0.012"
    assert new["against the bracket"] == "0.010 below its lower edge"
    assert old["physics bracket"] == "0.590" and old["against the bracket"] == "n/a"  # a report from before
    assert recall_rows({"new": NEW})[0]["physics (lower edge)"] == "0.600"
    assert "physics bracket 0.610-0.620 ± 0.012: 0.010 below its lower edge" in summary_line(
        {"headline": "h", "evaluation": {"new": NEW}}
    )
