"""The ladder and its arms, declared once (sslflow.ladder): names, order, students, one method per pipeline."""

import pandas as pd
import pytest

from sslflow.ladder import (
    LADDER,
    LadderError,
    arm,
    arm_order,
    continued_method,
    ladder_arms,
    ladder_steps,
    method_of,
    student_arm,
)
from sslflow.reporting.tables import effect_lines, methods_in_order


def test_simclr_keeps_its_arm_names_and_steps():
    assert ladder_arms("simclr") == ["simclr", "simclr+domain", "simclr+micle"]
    assert student_arm(arm("simclr", "case_pairs")) == "simclr+micle+student"
    assert ladder_steps("simclr") == [
        ("simclr+domain", "simclr", "domain SimCLR"),
        ("simclr+micle", "simclr+domain", "MICLe pairs"),
    ]
    assert [rung.case_pairs for rung in LADDER] == [False, False, True]


def test_every_method_gets_the_same_ladder_in_table_order():
    arms = ["moco+micle+student", "byol", "moco+domain", "scratch", "simclr+micle", "pixels", "moco", "moco+micle"]
    assert sorted(arms, key=arm_order) == [
        "pixels",
        "scratch",
        "simclr+micle",
        "moco",
        "moco+domain",
        "moco+micle",
        "moco+micle+student",
        "byol",
    ]
    assert ladder_steps("moco")[0] == ("moco+domain", "moco", "domain MoCo v2")
    assert method_of("byol+micle+student") == "byol" and method_of("scratch") is None and method_of("pixels") is None


def test_the_report_iterates_the_ladder_of_the_method_that_ran():
    rows = [
        {
            "init": init,
            "probe": "finetune",
            "label_fraction": 0.1,
            "seed": seed,
            "eval_set": eval_set,
            "accuracy": 0.5 + 0.1 * i + 0.01 * seed,
            "ece": 0.1,
        }
        for i, init in enumerate(["scratch", *ladder_arms("moco")])
        for seed in (0, 1, 2)
        for eval_set in ("in_domain", "shift")
    ]
    results = pd.DataFrame(rows)
    assert [init for init, _ in methods_in_order(results)] == ["scratch", "moco", "moco+domain", "moco+micle"]
    lines = effect_lines(results)
    assert (
        len(lines) == 2
        and lines[0].startswith("domain MoCo v2 (finetune, 0.1)")
        and lines[1].startswith("MICLe pairs (finetune, 0.1)")
    )


def test_a_pipeline_runs_one_method_given_once():
    """The domain rungs continue the generic rung's method; their config may leave it at its default or repeat it."""
    assert continued_method("moco", "simclr", default_method="simclr") == "moco"
    assert continued_method("moco", "moco", default_method="simclr") == "moco"
    with pytest.raises(LadderError, match="method='byol'.*method='simclr'"):
        continued_method("simclr", "byol", default_method="simclr")
