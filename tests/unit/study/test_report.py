"""The study's prose says what its figures say: judgements come from the ideal observer's numbers."""

from __future__ import annotations

from alloynet.study import report

# physics_limits rows (d' nominal, d' known, d' unknown, Bayes error unknown) per key pair, as docs/study has them
ROWS = [
    {
        "kvp": "50",
        "dose": 1e3,
        "ceiling": 0.44,
        "5083/6082": (4.8, 1.49, 0.04, 0.49),
        "1050/5083": (1.1, 1.66, 0.21, 0.46),
    },
    {
        "kvp": "50",
        "dose": 1e5,
        "ceiling": 0.71,
        "5083/6082": (47.5, 1.57, 0.26, 0.45),
        "1050/5083": (10.7, 1.94, 1.25, 0.27),
    },
    {
        "kvp": "40/50/60",
        "dose": 1e3,
        "ceiling": 0.65,
        "5083/6082": (8.3, 1.54, 0.17, 0.47),
        "1050/5083": (1.9, 1.82, 0.82, 0.34),
    },
    {
        "kvp": "40/50/60",
        "dose": 1e5,
        "ceiling": 0.84,
        "5083/6082": (83.3, 1.78, 0.64, 0.37),
        "1050/5083": (18.6, 3.60, 3.45, 0.05),
    },
]


def test_pairs_are_ranked_and_worded_by_their_bayes_error():
    pairs = {
        "Al2017 vs Al7075": {"d_unknown": 2.05, "bayes_error_unknown": 0.02},
        "Al5083 vs Al6082": {"d_unknown": 0.13, "bayes_error_unknown": 0.47},
        "Al1050 vs Al5083": {"d_unknown": 0.60, "bayes_error_unknown": 0.38},
    }
    text = report.pair_findings(pairs, [50.0])
    assert text.startswith(
        "Hardest pair, 5083 vs 6082: d' = 0.13 with thickness unknown (Bayes error 0.47): "
        "nearly inseparable in one 50 kV exposure."
    )
    assert "only partly separable: 1050 vs 5083 (0.38); separable: 2017 vs 7075 (0.02)." in text
    # the same pair, easier: the words follow the figure, not the pair's name
    easier = {"Al5083 vs Al6082": {"d_unknown": 3.0, "bayes_error_unknown": 0.05}}
    assert report.pair_findings(easier, [40.0, 50.0, 60.0]).endswith("separable in one 40/50/60 kV exposure.")
    assert report.pair_findings({}, [50.0]) == ""


def test_dose_and_kvp_findings_come_from_the_table_rows():
    text = report.limit_findings(ROWS)
    assert (
        "From 1e+03 to 1e+05 photons/px at 50 kV, 5083 vs 6082's d' with exact nominal plates grows 9.9x (the "
        "square root of the dose ratio is 10.0x), with real plates and thickness known 1.49 -> 1.57: the limit "
        "is the plates, not the detector."
    ) in text
    assert (
        "Extra kVp channels (40/50/60 against 50 kV) at 1e+05 photons/px raise d' with thickness unknown by "
        "+2.20 for 1050 vs 5083, +0.38 for 5083 vs 6082."
    ) in text
    detector_limited = [dict(r, **{"5083/6082": (r["5083/6082"][0], 10 * r["5083/6082"][0], 0.1, 0.45)}) for r in ROWS]
    assert "the detector still limits it" in report.limit_findings(detector_limited)
    assert report.limit_findings([]) == ""
