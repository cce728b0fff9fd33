"""The version-dependent names the RELION pipeline test uses (tests/relion_versions.py), for 3.1, 4.x and
5.x, so the 4.x/5.x branches are exercised where only RELION 3.1.3 is installed."""
import shutil

import pytest

from relion_versions import PipelinerNames, installed_version, parse_version

# what each version's `relion_pipeliner --version` prints (3.1.3: Debian's package, run here;
# 4.0.2 / 5.0.1: the same "RELION version:" line, from the source's printVersion and the 5.0.1 check in
# ../shared/reference/relion_external_job.md)
OUTPUTS = {
    "3.1": ("RELION version: 3.1.3 \nPrecision: BASE=double\n\n", (3, 1, 3)),
    "4": ("RELION version: 4.0.2-commit-a1b2c3 \nPrecision: BASE=double, CUDA-ACC=single \n", (4, 0, 2)),
    "5": ("RELION version: 5.0.1-commit-0f1e2d \nPrecision: BASE=double\n", (5, 0, 1)),
}


@pytest.mark.parametrize("series", OUTPUTS)
def test_parse_version(series):
    text, version = OUTPUTS[series]
    assert parse_version(text) == version
    assert PipelinerNames(version).series == series


def test_parse_version_rejects_other_output():
    with pytest.raises(ValueError):
        parse_version("relion_pipeliner: unknown option --version\n")
    assert parse_version("RELION version: 4.1\n") == (4, 1, 0)


def test_relion_31_names():
    r = PipelinerNames((3, 1, 3))
    assert (r.status_column, r.succeeded, r.failed) == ("rlnPipeLineProcessStatus", 2, 3)
    assert r.coords_node("External/job001/") == "External/job001/coords_suffix_autopick.star"
    assert r.coords_node("External/job001") == "External/job001/coords_suffix_autopick.star"
    assert r.node_file("External/job001/") == ".Nodes/2/External/job001/coords_suffix_autopick.star"
    assert r.class2d_iterations(2) == {"nr_iter": 2}
    assert r.run_jobs_arg(["A/", "B/"]) == "A/ B/ "


def test_relion_4_names():
    r = PipelinerNames((4, 0, 2))
    assert (r.status_column, r.succeeded, r.failed) == ("rlnPipeLineProcessStatusLabel", "Succeeded", "Failed")
    assert r.coords_node("External/job001/") == "External/job001/autopick.star"
    assert r.node_file("External/job001/") == ".Nodes/MicrographsCoords/External/job001/autopick.star"
    assert r.class2d_iterations(2) == {"do_em": "Yes", "do_grad": "No", "nr_iter_em": 2}
    assert r.run_jobs_arg(["A/", "B/"]) == "A/ B/ "


def test_relion_5_names():
    r = PipelinerNames((5, 0, 1))
    assert (r.status_column, r.succeeded, r.failed) == ("rlnPipeLineProcessStatusLabel", "Succeeded", "Failed")
    assert r.coords_node("External/job003/") == "External/job003/autopick.star"
    # the example in the reference's RELION 5 section
    assert r.node_file("External/job003/") == ".Nodes/MicrographCoordsGroup/External/job003/autopick.star"
    assert r.class2d_iterations(3) == {"do_em": "Yes", "do_grad": "No", "nr_iter_em": 3}
    assert r.run_jobs_arg(["A/", "B/"]) == "A/ B/"


@pytest.mark.parametrize("version", [(3, 1, 3), (4, 0, 2), (5, 0, 1)])
def test_node_is_the_one_the_adapter_registers(version, tmp_path):
    """The node file the test expects is the one our pick job lists in RELION_OUTPUT_NODES.star, under
    .Nodes/<its integer type> (3.1) or .Nodes/<its label up to the first dot> (4.x/5.x)."""
    from relion_hydra.nodes import pick_output_nodes

    r = PipelinerNames(version)
    name, int_type, label = pick_output_nodes("External/job001/", "autopick", r.series)[0]
    assert name == r.coords_node("External/job001/")
    folder = str(int_type) if version < (4,) else label.split(".")[0]
    assert r.node_file("External/job001/") == f".Nodes/{folder}/{name}"


@pytest.mark.skipif(shutil.which("relion_pipeliner") is None, reason="relion_pipeliner not on PATH")
def test_installed_pipeliner_version_is_readable():
    assert installed_version() >= (3, 1, 0)
