"""What a test that drives ``relion_pipeliner`` must spell differently in RELION 3.1, 4.x and 5.x.

The version comes from ``relion_pipeliner --version`` (3.1.3, 4.x and 5.x all print
``RELION version: X.Y.Z...`` on stdout). The differences (../shared/reference/relion_external_job.md,
"RELION 5.0 through its own pipeliner" and §1.2/§1.3/§2.3):

* job status in ``default_pipeline.star``: 3.1 writes the integer ``_rlnPipeLineProcessStatus``
  (2 succeeded, 3 failed); 4.x and 5.x write ``_rlnPipeLineProcessStatusLabel`` ("Succeeded", "Failed");
* the pick job's coordinates node: 3.1 registers ``coords_suffix_<pickname>.star`` under
  ``.Nodes/2/...`` (integer type); 4.x/5.x register ``autopick.star`` under ``.Nodes/<label prefix>/...``,
  the prefix of the label our adapter writes (``relion_hydra.nodes.COORDS_LABEL``: 4.x
  ``MicrographsCoords``, 5.x ``MicrographCoordsGroup``); Extract reads that node;
* Class2D iterations: 3.1 ``nr_iter``; 4.x/5.x ``do_em == Yes; do_grad == No; nr_iter_em`` (``nr_iter``
  is an unknown option there and ``--addJob`` fails);
* ``--RunJobs "A/ B/"``: 3.1 and 4.0 drop the last job unless the list ends with a space; 5.0 does not.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

VERSION_RE = re.compile(r"RELION version:\s*v?(\d+)\.(\d+)(?:\.(\d+))?")


def parse_version(text: str) -> tuple[int, int, int]:
    """(major, minor, patch) from ``relion_pipeliner --version`` output; ValueError if absent."""
    m = VERSION_RE.search(text)
    if m is None:
        raise ValueError(f"no 'RELION version: X.Y' in {text!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def installed_version(exe: str = "relion_pipeliner") -> tuple[int, int, int]:
    """The version of the ``exe`` on PATH (FileNotFoundError if none, ValueError if unreadable)."""
    path = shutil.which(exe)
    if path is None:
        raise FileNotFoundError(f"{exe} not on PATH")
    r = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
    return parse_version(r.stdout + "\n" + r.stderr)


@dataclass(frozen=True)
class PipelinerNames:
    """The version-dependent names for one RELION version."""
    version: tuple[int, int, int]

    @property
    def major(self) -> int:
        return self.version[0]

    @property
    def series(self) -> str:
        """The adapter's version key ("3.1", "4" or "5"), as in ``relion_hydra.nodes``."""
        return "3.1" if self.major < 4 else ("4" if self.major == 4 else "5")

    @property
    def status_column(self) -> str:
        return "rlnPipeLineProcessStatus" if self.major < 4 else "rlnPipeLineProcessStatusLabel"

    @property
    def succeeded(self):
        return 2 if self.major < 4 else "Succeeded"

    @property
    def failed(self):
        return 3 if self.major < 4 else "Failed"

    def coords_node(self, job: str, pickname: str = "autopick") -> str:
        """The pick job's coordinates node (what Extract takes as ``coords_suffix``)."""
        job = job.rstrip("/") + "/"
        return f"{job}coords_suffix_{pickname}.star" if self.major < 4 else f"{job}autopick.star"

    def node_dir(self) -> str:
        """The folder under ``.Nodes/`` that holds the coordinates node."""
        if self.major < 4:
            return "2"
        from relion_hydra.nodes import COORDS_LABEL
        return COORDS_LABEL[self.series].split(".")[0]

    def node_file(self, job: str, pickname: str = "autopick") -> str:
        """Where the pipeliner marks the registered coordinates node, relative to the project."""
        return f".Nodes/{self.node_dir()}/{self.coords_node(job, pickname)}"

    def class2d_iterations(self, n: int) -> dict:
        """Class2D job options for ``n`` EM iterations."""
        if self.major < 4:
            return {"nr_iter": n}
        return {"do_em": "Yes", "do_grad": "No", "nr_iter_em": n}

    def run_jobs_arg(self, jobs) -> str:
        """The ``--RunJobs`` value: 3.1 and 4.0 need a trailing space, else the last job is dropped."""
        s = " ".join(jobs)
        return s + " " if self.version < (5, 0, 0) else s


def pipeliner_names(exe: str = "relion_pipeliner") -> PipelinerNames:
    return PipelinerNames(installed_version(exe))
