"""Notebooks are committed clean and thin; every params file key is a parameter of its notebook."""

from __future__ import annotations

import ast
import json

import pytest
import yaml

from asr_workbench import batch
from conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
PARAMS = sorted(p for p in (REPO / "params").rglob("*.yaml")
                if not p.name.endswith((".pipeline.yaml", ".sweep.yaml")))


def test_there_are_notebooks_and_params():
    assert NOTEBOOKS and PARAMS


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs_or_widget_state(nb):
    data = json.loads(nb.read_text(encoding="utf-8"))
    for cell in data["cells"]:
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None, nb
    assert "widgets" not in data.get("metadata", {})


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell_is_annotated_literals_with_help(nb):
    data = json.loads(nb.read_text(encoding="utf-8"))
    cells = [c for c in data["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1
    source = "".join(cells[0]["source"])
    for line in source.splitlines():
        if not line.strip():
            continue
        node = ast.parse(line.split("  #")[0]).body[0]
        assert isinstance(node, ast.AnnAssign), line  # name: type = value
        ast.literal_eval(node.value)  # a literal, nothing computed
        assert "  # " in line, f"no help comment: {line}"
    params = batch.notebook_parameters(nb)
    assert all(p["help"] for p in params.values())


_LOGIC = (ast.For, ast.AsyncFor, ast.While, ast.If, ast.IfExp, ast.With, ast.Try, ast.FunctionDef, ast.AsyncFunctionDef,
          ast.ClassDef, ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp, ast.BinOp, ast.BoolOp,
          ast.Compare, ast.Subscript)


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_cells_after_parameters_only_call_the_library(nb):
    """No logic in cells: imports, one library call each (its result kept in a name, or displayed), and no
    parameter overwritten (papermill records the parameters; a cell that rebinds one makes the record lie)."""
    data = json.loads(nb.read_text(encoding="utf-8"))
    code = [c for c in data["cells"] if c["cell_type"] == "code"]
    params = set(batch.notebook_parameters(nb))
    for cell in code[1:]:
        tree = ast.parse("".join(cell["source"]))
        logic = [type(n).__name__ for n in ast.walk(tree) if isinstance(n, _LOGIC)]
        assert not logic, f"{nb.name}: {logic} in {''.join(cell['source'])!r}"
        for stmt in tree.body:
            assert isinstance(stmt, (ast.Import, ast.ImportFrom, ast.Expr, ast.Assign)), ast.dump(stmt)
            assert isinstance(stmt, (ast.Import, ast.ImportFrom)) or isinstance(stmt.value, ast.Call), ast.dump(stmt)
            rebound = {t.id for t in getattr(stmt, "targets", []) if isinstance(t, ast.Name)} & params
            assert not rebound, f"{nb.name}: a cell rebinds parameter(s) {rebound}"


@pytest.mark.parametrize("params_file", PARAMS, ids=lambda p: str(p.relative_to(REPO)))
def test_params_file_keys_are_notebook_parameters(params_file):
    nb = batch.notebook_for(params_file)
    keys = set(yaml.safe_load(params_file.read_text(encoding="utf-8")) or {})
    assert keys <= set(batch.notebook_parameters(nb)), keys - set(batch.notebook_parameters(nb))


def test_unknown_param_key_fails_the_run_command(tmp_path):
    bad = tmp_path / "infer.yaml"
    bad.write_text("modle: demo/model\n")
    with pytest.raises(ValueError, match="modle not parameter"):
        batch.run_notebook(bad, notebook=REPO / "notebooks" / "infer.ipynb")
