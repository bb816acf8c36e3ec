"""Every notebook under notebooks/ runs top to bottom on a real Jupyter kernel.

The kernel is the ``python3`` kernelspec; the test first checks that it launches this
interpreter (``sys.executable``), so the notebook sees the package under test.
"""

from __future__ import annotations

import os
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


@pytest.fixture(scope="module")
def kernel_name() -> Iterator[str]:
    """The ``python3`` kernelspec, checked to launch this very interpreter."""
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("nbformat")
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    from jupyter_client.manager import KernelManager

    with pytest.MonkeyPatch.context() as mp:
        if "JUPYTER_PLATFORM_DIRS" not in os.environ:
            mp.setenv("JUPYTER_PLATFORM_DIRS", "1")
        try:
            KernelSpecManager().get_kernel_spec("python3")
        except NoSuchKernel:
            pytest.skip("no python3 kernelspec (pip install ipykernel)")
        # jupyter_client swaps a kernelspec's bare "python" for sys.executable; any other
        # interpreter would import another installation of hypernodes_chain (or none)
        cmd = KernelManager(kernel_name="python3").format_kernel_cmd()
        if Path(cmd[0]).resolve() != Path(sys.executable).resolve():
            pytest.skip(
                f"the python3 kernelspec launches {cmd[0]}, not this interpreter "
                f"{sys.executable}; run `{sys.executable} -m ipykernel install --sys-prefix`"
            )
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


def test_there_are_notebooks() -> None:
    assert NOTEBOOKS, "notebooks/ holds no .ipynb file"
