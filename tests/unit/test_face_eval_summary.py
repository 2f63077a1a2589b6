"""What `coral eval --world faces` prints per edit kind and over all kinds: the clean share
(succeeded and kept every other part), refusals apart from damage, the worst case."""
from __future__ import annotations

from typing import Any

import pytest

from coral_core.world.faces.evaluate import format_table, summarise


def _row(kind: str, success: bool, kept: bool, psnr: float, unchanged: bool = False,
         warnings: tuple[str, ...] = (), method: str = "coral_ss") -> dict[str, Any]:
    return {"method": method, "kind": kind, "success": success, "others_preserved": kept,
            "psnr_outside": psnr, "psnr_outside_dilated": psnr, "psnr_inside_ideal": 20.0,
            "change_interior": 1.0, "change_edge": 1.0, "seconds_per_edit": 2.0,
            "selected_layers": [3], "unchanged": unchanged, "warnings": list(warnings)}


ROWS = [_row("smile", True, True, 40.0), _row("smile", True, False, 20.0),
        _row("smile", False, True, 100.0, unchanged=True, warnings=("too short",)),
        _row("smile", False, False, 25.0, warnings=("no layer",)),
        _row("beard", False, True, 100.0, unchanged=True, warnings=("refused",)),
        _row("beard", True, True, 35.0)]


def test_clean_counts_an_edit_that_succeeded_and_kept_the_rest() -> None:
    summary = summarise(ROWS)
    smile, beard, every = (summary[f"coral_ss / {k}"] for k in ("smile", "beard", "all"))
    assert smile["clean"] == pytest.approx(1 / 4) and beard["clean"] == pytest.approx(1 / 2)
    assert every["cases"] == 6 and every["clean"] == pytest.approx(2 / 6)
    assert every["success"] == pytest.approx(3 / 6)  # not the same figure as clean


def test_a_refusal_is_told_apart_from_a_warned_edit_that_changed_the_picture() -> None:
    smile = summarise(ROWS)["coral_ss / smile"]
    assert smile["unchanged_warned"] == pytest.approx(1 / 4)  # the changed one warned too


def test_the_worst_case_is_printed_beside_the_median() -> None:
    summary = summarise(ROWS)
    assert summary["coral_ss / smile"]["psnr_outside_worst"] == 20.0
    assert summary["coral_ss / smile"]["psnr_outside"] == pytest.approx(32.5)
    table = format_table(summary)
    assert "| clean (both) |" in table.splitlines()[0] and "| worst |" in table.splitlines()[0]
    line = next(x for x in table.splitlines() if x.startswith("| coral_ss / all |"))
    assert "| 6 | 0.50 | 0.67 | 0.33 | 0.33 |" in line


def test_one_kind_gets_no_all_row_and_methods_stay_apart() -> None:
    summary = summarise([_row("beard", True, True, 35.0),
                         _row("beard", False, True, 100.0, method="coral_can")])
    assert set(summary) == {"coral_ss / beard", "coral_can / beard"}
