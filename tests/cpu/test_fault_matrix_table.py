"""The fault-injection matrix of the README, regenerated over the fake driver: every cell keeps
the guarantees (nothing written (but by a copy whose wait failed), nothing leaked, counted once, sticky faults latch and turn
/healthz to 503, others leave the device usable), and the README shows exactly this table."""

from pathlib import Path

import fault_matrix

README = Path(__file__).resolve().parents[2] / "README.md"


def _check_cell(r: dict) -> list[str]:
    where = f"{r['call']} x {r['fault']}"
    problems = []

    def want(what: str, got: object, expected: object) -> None:
        if got != expected:
            problems.append(f"{where}: {what} {got!r}, want {expected!r}")

    want("driver function reached", r["reached"], True)
    # A wait that fails cannot unwrite what its copy wrote: only the other calls write nothing.
    want("bytes written", r["written"], ["host buffer"] if r["call"].endswith("then wait") else [])
    want("orphaned driver memory after the call",
         r["orphans"], 1 if r["sticky"] and r["registry"] == "entry dropped as lost" else 0)
    counted = {op: sum(by.values()) for op, by in r["moved"].items()}
    calls_moved = {op: n for op, n in counted.items() if op != "wipe"}
    want("calls counted", sum(calls_moved.values()), 1)
    if r["call"].endswith("wipe on"):
        want("wipes counted", counted.get("wipe"), 1)
    if r["sticky"]:
        want("status", r["status"], 8)
        want("device", r["state"], "failed")
        want("/healthz healthy", r["healthy"], False)
        want("next calls", r["following"], "answer 8, no driver call")
    else:
        want("status", r["status"] != 0 and r["status"] != 8, True)
        want("registry", r["registry"], "unchanged")
        want("device", r["state"], "usable")
        want("/healthz healthy", r["healthy"], True)
        want("next calls", r["following"], "work")
        want("left after freeing all", r["left"], 0)
        want("registry live at the end", r["registry_live_end"], 0)
    return problems


def test_fault_matrix_cells_and_readme_table(fake_driver: Path) -> None:
    results = fault_matrix.run_matrix(fake_driver)
    assert len(results) == len(fault_matrix.CALLS) * len(fault_matrix.FAULTS)
    problems = [p for r in results for p in _check_cell(r)]
    assert not problems, "\n".join(problems)
    table = fault_matrix.markdown(results)
    print(table)
    assert fault_matrix.table_in(README) == table, (
        "README.md's fault-injection matrix is not what the code does now; regenerate it with "
        "`python tests/cpu/fault_matrix.py --readme README.md`\n" + table
    )
