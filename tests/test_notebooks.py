"""The notebooks run top to bottom on the small sweeps' tables (nbclient, a kernel of this venv's Python),
and every figure cell renders a PNG."""

from __future__ import annotations

import asyncio
import json
import sys

import nbformat
import pytest
from conftest import ROOT
from test_sweep_small import small_results

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
KERNEL = "moetb-test-venv"
FIGURES = {"scaling": 2, "placement": 3, "overlap": 2, "mla_vs_mha": 1, "validation": 1}
"""PNG outputs each notebook shows with the small sweeps (family figures, plus kept traces)."""


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """A kernelspec that starts ipykernel with this very interpreter (a fresh venv's own `python3` spec
    says `python`, which depends on PATH), found through JUPYTER_PATH."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    spec.joinpath("kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "moetb test", "language": "python"}))
    return {"JUPYTER_PATH": str(root), "MOETB_RESULTS": str(small_results())}


async def _execute_all(books):
    from nbclient import NotebookClient

    async def one(book):
        client = NotebookClient(book, kernel_name=KERNEL, timeout=120,
                                resources={"metadata": {"path": str(ROOT / "notebooks")}})
        await client.async_execute()

    await asyncio.gather(*(one(b) for b in books))


def _empty_validation_book(tmp_path):
    """validation.ipynb pointed at a validation table with nothing committed."""
    from moe.sweep import run_sweep

    (tmp_path / "v.yaml").write_text("name: validation\nmeasured: none-committed\n")
    assert run_sweep(tmp_path / "v.yaml", out=tmp_path / "results" / "validation") == 0
    book = nbformat.read(ROOT / "notebooks" / "validation.ipynb", as_version=4)
    book.cells.insert(0, nbformat.v4.new_code_cell(
        f"import os\nos.environ['MOETB_RESULTS'] = {str(tmp_path / 'results')!r}"))
    return book


def test_notebooks_execute_and_show_their_figures(kernel_env, monkeypatch, tmp_path):
    for key, value in kernel_env.items():
        monkeypatch.setenv(key, value)
    assert [p.stem for p in NOTEBOOKS] == sorted(FIGURES)
    books = [nbformat.read(p, as_version=4) for p in NOTEBOOKS]
    empty = _empty_validation_book(tmp_path)
    asyncio.run(_execute_all([*books, empty]))
    text = "".join(o.get("text", "") for c in empty.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "emu: 0 measurements - none committed yet" in text and "real: 0 measurements" in text
    assert not any("image/png" in o.get("data", {}) for c in empty.cells for o in c.get("outputs", []))
    for path, book in zip(NOTEBOOKS, books, strict=True):
        outputs = [o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        assert not [o for o in outputs if o.get("output_type") == "error"], path.name
        pngs = sum("image/png" in o.get("data", {}) for o in outputs)
        assert pngs == FIGURES[path.stem], (path.name, pngs)


def test_notebooks_are_committed_without_outputs():
    for path in NOTEBOOKS:
        book = nbformat.read(path, as_version=4)
        nbformat.validate(book)
        assert all(not c.get("outputs") and c.get("execution_count") is None
                   for c in book.cells if c.cell_type == "code"), path.name
