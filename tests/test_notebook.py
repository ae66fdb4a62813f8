"""The tutorial notebook: examples/tutorial.ipynb is examples/tutorial.py, and it runs.

The notebook is kept as a jupytext "percent" script paired with the .ipynb. The first test
checks that the two hold the same cells (jupytext reads both) and that the .ipynb is committed
without outputs. The second executes the .ipynb headless in a fresh kernel (nbclient; a failing
cell fails the test) and reads its printed figures: the PyTorch-vs-jaxrnn parity of Part 3, the
padded-vs-packed difference of Part 4, losses that went down, and the inline plots.
"""

import json
import pathlib
import re
import sys

import pytest

jupytext = pytest.importorskip("jupytext", reason="the dev extra (jupytext) is not installed")
nbformat = pytest.importorskip("nbformat", reason="the dev extra (nbformat) is not installed")

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
SCRIPT, NOTEBOOK = EXAMPLES / "tutorial.py", EXAMPLES / "tutorial.ipynb"
CELL_TIMEOUT_S = 300
KERNEL_NAME = "jaxrnn-notebook-test"


def _cells(notebook):
    return [(cell.cell_type, cell.source) for cell in notebook.cells]


def test_notebook_and_script_hold_the_same_cells():
    from_script = jupytext.read(SCRIPT)
    from_notebook = jupytext.read(NOTEBOOK)
    assert len(from_notebook.cells) > 10
    assert _cells(from_notebook) == _cells(from_script), (
        "examples/tutorial.ipynb and tutorial.py differ: run "
        "`jupytext --sync examples/tutorial.py` after editing the .py")
    assert from_notebook.metadata["jupytext"]["formats"] == "ipynb,py:percent"
    # committed without outputs, so the diff of a change is its source
    raw = nbformat.read(NOTEBOOK, as_version=4)
    for cell in raw.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def _stream_text(notebook) -> str:
    return "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                   for output in cell.outputs if output.output_type == "stream")


def _figure(pattern: str, text: str) -> list[float]:
    match = re.search(pattern, text)
    assert match, f"the notebook printed no line matching {pattern!r}"
    return [float(group) for group in match.groups()]


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook after a headless run in a fresh kernel of this interpreter, cwd a tmp dir.

    The kernel is registered here, in a tmp JUPYTER_PATH, so it runs sys.executable (the
    installed kernelspec says `python`, whichever that is on PATH). The fused CPU kernels'
    build folder is an empty tmp dir: the notebook must not build them (that would double
    its run time), so the folder must stay empty.
    """
    nbclient = pytest.importorskip("nbclient", reason="the dev extra (nbclient) is not installed")
    pytest.importorskip("ipykernel", reason="the dev extra (ipykernel) is not installed")
    pytest.importorskip("torch", reason="the notebook's Parts 3-4 need torch")
    root = tmp_path_factory.mktemp("notebook")
    spec_dir = root / "jupyter" / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "jaxrnn test kernel", "language": "python"}))
    kernel_cache = root / "kernel-cache"
    kernel_cache.mkdir()
    workdir = root / "cwd"
    workdir.mkdir()
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_PATH", str(root / "jupyter"))
        patch.setenv("JAXRNN_KERNEL_CACHE", str(kernel_cache))
        patch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
        client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT_S,
                                         kernel_name=KERNEL_NAME,
                                         resources={"metadata": {"path": str(workdir)}})
        client.execute()  # raises CellExecutionError, naming the cell, if one fails
    assert list(kernel_cache.iterdir()) == [], "the notebook built the fused CPU kernels"
    return notebook


def test_notebook_runs_and_torch_matches_jaxrnn(executed):
    text = _stream_text(executed)
    # Part 1: the from-scratch loss is the library's, and training lowered it.
    scratch, library = _figure(r"loss of the first chunk: ([\d.]+) .*\n.*\n"
                               r"jaxrnn\.tutorial\.rnn_loss, .*: ([\d.]+)", text)
    assert scratch == library
    block_losses = [float(x) for x in re.findall(r"mean loss of the last block ([\d.]+)", text)]
    assert len(block_losses) == 4  # two blocks of Part 1, two of Part 2
    assert block_losses[1] < block_losses[0] and block_losses[3] < block_losses[2]
    # Part 3: trained side by side from the same weights, float32, equal up to rounding.
    loss_diff, param_diff = _figure(r"Part 3 parity: max \|loss difference\| = (\S+), "
                                    r"max \|parameter difference\| = (\S+)", text)
    assert loss_diff < 1e-5 and param_diff < 1e-5
    first, last = _figure(r"loss: ([\d.]+) -> ([\d.]+) \(jaxrnn\)", text)
    assert last < first - 0.5
    # Part 4: padding + lengths equals packing; the two trainings agree and were timed.
    output_diff, h_n_diff = _figure(r"Part 4 padded vs packed: max \|output difference\| = "
                                    r"(\S+), max \|h_n difference\| = (\S+)", text)
    assert output_diff < 1e-6 and h_n_diff < 1e-6
    (line_diff,) = _figure(r"\(PyTorch\); max \|difference\| (\S+)", text)
    assert line_diff < 1e-4
    speeds = [float(x.replace(",", "")) for x in re.findall(r"\(([\d,]+) chars/s", text)]
    assert len(speeds) == 4 and min(speeds) > 0  # Parts 3 and 4, each framework
    # the two inline plots
    images = [output for cell in executed.cells if cell.cell_type == "code"
              for output in cell.outputs if "image/png" in output.get("data", {})]
    assert len(images) == 2
