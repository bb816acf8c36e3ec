"""Every notebook under notebooks/ runs top to bottom on a real Jupyter kernel.

The kernel is the ``python3`` kernelspec, checked (and if need be re-pointed) to launch this
interpreter (``sys.executable``), so the notebook sees the package under test.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))

# Jupyter's own deprecation notices, not ours (the suite turns warnings into errors):
# jupyter_core 5.x warns until the platformdirs layout is opted into (JUPYTER_PLATFORM_DIRS=1,
# set by the fixture; the filter covers a user who set it to 0), nbclient stamps cells with
# datetime.utcnow() (deprecated since Python 3.12), and jupyter_client/tornado ask for the
# event loop policy (deprecated since Python 3.14).
JUPYTER_WARNINGS = [
    "ignore:Jupyter is migrating its paths to use standard platformdirs:DeprecationWarning",
    r"ignore:datetime\.datetime\.utcnow\(\) is deprecated:DeprecationWarning",
    r"ignore:'asyncio\.get_event_loop_policy' is deprecated:DeprecationWarning",
]


def _launches_this_python() -> bool:
    from jupyter_client.kernelspec import NoSuchKernel
    from jupyter_client.manager import KernelManager

    try:
        cmd = KernelManager(kernel_name="python3").format_kernel_cmd()
    except NoSuchKernel:
        return False
    # jupyter_client swaps a kernelspec's bare "python" for sys.executable. Paths are compared
    # unresolved: a venv's python is a symlink to the base interpreter, which lacks the venv.
    return os.path.abspath(cmd[0]) == os.path.abspath(sys.executable)


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The ``python3`` kernelspec, made to launch this very interpreter.

    If the ``python3`` spec that Jupyter finds runs another interpreter (a user-wide spec for
    a system Python, say), a private spec bound to ``sys.executable`` goes first on
    ``JUPYTER_PATH`` for the duration of the module.
    """
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("nbformat")

    with pytest.MonkeyPatch.context() as mp:
        if "JUPYTER_PLATFORM_DIRS" not in os.environ:
            mp.setenv("JUPYTER_PLATFORM_DIRS", "1")
        if not _launches_this_python():
            root = tmp_path_factory.mktemp("jupyter")
            spec_dir = root / "kernels" / "python3"
            spec_dir.mkdir(parents=True)
            spec = {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (hypernodes_chain tests)",
                "language": "python",
            }
            (spec_dir / "kernel.json").write_text(json.dumps(spec))
            paths = [str(root), *filter(None, [os.environ.get("JUPYTER_PATH")])]
            mp.setenv("JUPYTER_PATH", os.pathsep.join(paths))
            assert _launches_this_python(), "the private python3 kernelspec was not picked up"
        yield "python3"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
@pytest.mark.filterwarnings(*JUPYTER_WARNINGS)
def test_notebook_runs_top_to_bottom(path: Path, kernel_name: str, tmp_path: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name=kernel_name,
        timeout=120,  # per cell
        allow_errors=False,  # the first cell that raises fails the test (CellExecutionError)
        resources={"metadata": {"path": str(tmp_path)}},  # the kernel's working directory
    )
    client.execute()
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors, errors
    if path.name == "quickstart.ipynb":
        _final_frame_is_complete(nb)


def _final_frame_is_complete(nb: object) -> None:
    """The progress display's last frame, saved in the widget state, shows every bar done
    (its map has 2,000 items): Live.stop() alone left an earlier frame there."""
    import re

    state = json.dumps(nb.metadata.get("widgets", {}))  # type: ignore[attr-defined]
    counts = set(re.findall(r"([\d,]+)/2,000", state))
    assert counts == {"2,000"}, f"the saved frame shows {sorted(counts)} of 2,000 items"


def test_there_are_notebooks() -> None:
    assert NOTEBOOKS, "notebooks/ holds no .ipynb file"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_stored_with_its_outputs(path: Path) -> None:
    """Read on GitHub or opened without a kernel, the notebook shows what it does: every
    code cell that prints or ends in a value has its output, and no empty ``<pre></pre>``
    display is left among them."""
    nb = json.loads(path.read_text())
    cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    silent = [c for c in cells if not c["outputs"]]
    assert len(silent) <= 2, "the notebook is stored without its outputs"  # set-up, clean-up
    for cell in cells:
        for out in cell["outputs"]:
            html = "".join(out.get("data", {}).get("text/html", ["x"]))
            assert not re.fullmatch(r"<pre[^>]*></pre>\s*", html), "an empty display is stored"
