from alloynet.evaluate.robustness import markdown

ROW = {
    "description": "plates of any thickness 1-5 mm",
    "n": 300,
    "balanced_accuracy": 0.55,
    "heavy_light": 0.98,
    "ceiling": 0.62,
    "ceiling_heavy_light": 0.99,
    "ceiling_lower_se": 0.006,
    "ceiling_upper": 0.625,
    "ceiling_upper_se": 0.007,
    "ceiling_position": "0.070 below its lower edge",
    "gap": 0.07,
    "set_coverage": 0.95,
    "set_size": 2.0,
    "physics_fit": 0.6,
    "flags": {},
}


def test_each_case_stands_beside_its_bracket_with_errors():
    md = markdown([ROW, {**ROW, "description": "no bracket", "ceiling": None, "ceiling_position": None}], "ckpt")
    assert (
        "| plates of any thickness 1-5 mm | 300 | 0.550 | 0.620 ± 0.006 - 0.625 ± 0.007 | 0.070 below its lower "
        "edge |" in md
    )
    assert "| no bracket | 300 | 0.550 | n/a | - |" in md
