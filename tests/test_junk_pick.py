"""End to end: hydra pick on simulated junk micrographs keeps no pick in border bands (or near them) and
reports the excluded area; a clean micrograph loses nothing."""
import numpy as np
import pytest

from hydrapicker.cli import main as hydra
from hydrapicker.coords import read_coords
from hydrapicker.simulate import simulate_micrograph
from hydrapicker.simulate.datasets import junk_target_specs

from conftest import write_mrc

OFF = dict(p_junk_only=0.0, vesicles=0.0, ice_crystals=0.0, gold=0.0, rim_contamination=0.0, p_thin_carbon=0.0,
           other_aggregates=0.0, p_border=0.0, p_gain_stripes=0.0, p_hot_pixels=0.0)


def _summary(out):
    rows = [ln.split("\t") for ln in (out / "summary_hydra.tsv").read_text().splitlines()]
    assert rows[0][4:] == ["excluded_area", "evidence"]
    return {r[0]: r for r in rows[1:]}


@pytest.fixture(scope="module")
def junk_mics(tmp_path_factory):
    d = tmp_path_factory.mktemp("junkmics")
    spec = junk_target_specs()[0].replace(**{**OFF, "p_border": 1.0, "vesicles": 2.0, "other_aggregates": 2.0,
                                             "ice_crystals": 1.0}, shape=(448, 448), coverage=(0.25, 0.3))
    mics = {}
    for i in range(3):
        m = simulate_micrograph(spec, i)
        mics[m.name] = (write_mrc(d / f"{m.name}.mrc", m.image, apix=spec.pixel_size), m)
    clean = simulate_micrograph(spec.replace(**OFF, name="plain"), 0)
    mics["plain"] = (write_mrc(d / "plain.mrc", clean.image, apix=spec.pixel_size), clean)
    return d, spec, mics


def test_pick_on_junk_micrographs_drops_picks_in_and_near_border_bands(junk_mics, tmp_path):
    d, spec, mics = junk_mics
    out, keep = tmp_path / "default", tmp_path / "keep"
    args = [str(d / "*.mrc"), "--diameter", str(spec.diameter_A), "--all", "--threads", "1"]
    assert hydra(["pick", *args, "--out", str(out)]) == 0
    assert hydra(["pick", *args, "--out", str(keep), "--keep-invalid"]) == 0
    summ = _summary(out)
    from hydrapicker import defaults

    margin = defaults.INVALID_MARGIN_DIAMETERS * spec.diameter_px  # the rule's own fraction of a diameter
    n_dropped = 0
    for name, (path, sim) in mics.items():
        ny, nx = sim.image.shape
        row = next(r for k, r in summ.items() if k.endswith(f"{name}.mrc"))
        got = next(iter(read_coords(out / row[1]).values()))
        kept_all = next(iter(read_coords(keep / row[1]).values()))
        bands = sim.info.get("border_bands") or []
        if name == "plain":
            assert float(row[4]) == 0.0  # a clean micrograph loses no area and no pick
            assert len(got) == len(kept_all)
            continue
        assert bands and float(row[4]) > 0
        for _, edge, depth in bands:
            dist = [got.y, ny - 1 - got.y, got.x, nx - 1 - got.x][edge]
            assert np.all(dist > depth - 1 + margin - 1.0), (name, edge, depth)
            dist_all = [kept_all.y, ny - 1 - kept_all.y, kept_all.x, nx - 1 - kept_all.x][edge]
            n_dropped += int(np.sum(dist_all <= depth - 1 + margin - 1.0))
    assert n_dropped > 0  # --keep-invalid does pick there: the default really excluded something


def test_the_junk_trained_model_ships_by_name_and_names_its_lineage():
    from hydrapicker.checkpoint import SHIPPED_MODELS, load_checkpoint, read_checkpoint

    assert SHIPPED_MODELS["generic-junk"].stat().st_size < 25e6
    meta = read_checkpoint("generic-junk")["meta"]
    rec = meta["training"]["recipe"]
    assert rec["junk_fraction"] == 0.7 and meta["training"]["init_from"]  # trained on junk, from the shipped one
    junk_sets = [d for d in meta["training"]["datasets"] if d.get("vesicles") or d.get("p_border")]
    assert len(junk_sets) >= 20
    net, _ = load_checkpoint("generic-junk")
    assert net.head_names == ["generic"]


def test_the_distilled_junk_model_ships_by_name_and_records_its_teacher():
    from hydrapicker.checkpoint import SHIPPED_MODELS, load_checkpoint, read_checkpoint

    assert SHIPPED_MODELS["generic-junk-distilled"].stat().st_size < 25e6
    meta = read_checkpoint("generic-junk-distilled")["meta"]
    rec = meta["training"]["recipe"]
    assert rec["junk_fraction"] == 0.6 and rec["distill_weight"] == 4.0
    assert rec["distill"].endswith("generic.pt") and meta["training"]["init_from"]["path"].endswith("generic.pt")
    junk_sets = [d for d in meta["training"]["datasets"] if d.get("vesicles") or d.get("p_border")]
    assert len(junk_sets) >= 20
    net, _ = load_checkpoint("generic-junk-distilled")
    assert net.head_names == ["generic"]


@pytest.mark.parametrize("name, junk_fraction, distill_weight, seed, init_file", [
    ("generic-junk-distilled-2", 0.8, 4.0, 9, "generic_junk_distilled.pt"),   # continues the first distilled
    ("generic-junk-distilled-3", 0.8, 6.0, 10, "generic_junk_distilled_2.pt"),  # continues the default
])
def test_the_later_distilled_junk_models_ship_by_name_and_continue_their_predecessor(
        name, junk_fraction, distill_weight, seed, init_file):
    from hydrapicker.checkpoint import SHIPPED_MODELS, load_checkpoint, read_checkpoint

    assert SHIPPED_MODELS[name].stat().st_size < 25e6
    meta = read_checkpoint(name)["meta"]
    rec = meta["training"]["recipe"]
    assert rec["junk_fraction"] == junk_fraction and rec["distill_weight"] == distill_weight and rec["seed"] == seed
    assert rec["distill"].endswith("generic.pt")
    assert meta["training"]["init_from"]["path"].endswith(init_file)
    net, _ = load_checkpoint(name)
    assert net.head_names == ["generic"]


def test_the_default_model_is_the_junk_trained_one_and_generic_still_names_the_first():
    from hydrapicker.checkpoint import SHIPPED_MODELS, default_model_path, read_checkpoint

    default = read_checkpoint(default_model_path())["meta"]
    assert default_model_path() == SHIPPED_MODELS["default"] == SHIPPED_MODELS["generic-junk-distilled-2"]
    assert default["training"]["recipe"]["junk_fraction"] > 0  # learnt what is not a particle
    first = read_checkpoint("generic")["meta"]
    assert SHIPPED_MODELS["generic"].name == "generic.pt" and "junk_fraction" not in str(first["training"])


def test_micrograph_evidence_drops_picks_on_a_junk_only_micrograph_and_none_where_particles_are(
        junk_mics, tmp_path, capsys):
    d, spec, mics = junk_mics
    free = simulate_micrograph(spec.replace(p_junk_only=1.0, name="free"), 0)
    assert len(free.xy) == 0
    src = tmp_path / "mics"
    src.mkdir()
    write_mrc(src / "free.mrc", free.image, apix=spec.pixel_size)
    write_mrc(src / "plain.mrc", mics["plain"][1].image, apix=spec.pixel_size)
    args = [str(src / "*.mrc"), "--diameter", str(spec.diameter_A), "--threads", "1"]
    n = {}
    for run, extra in (("default", []), ("strong", ["--evidence", "2"]), ("raw", ["--no-evidence"])):
        capsys.readouterr()
        assert hydra(["pick", *args, "--out", str(tmp_path / run), *extra]) == 0
        if run == "strong":
            log = capsys.readouterr()
            assert "weak micrograph evidence" in log.out + log.err
        summ = {k.rsplit("/", 1)[-1]: r for k, r in _summary(tmp_path / run).items()}
        n[run] = {k: int(r[2]) for k, r in summ.items()}
        if run == "strong":  # the summary says which micrographs were weighed, and by how much
            assert float(summ["free.mrc"][5]) < 1.0 and float(summ["plain.mrc"][5]) == 1.0
        if run == "raw":
            assert summ["free.mrc"][5] == ""  # evidence off: nothing weighed
    assert n["raw"]["free.mrc"] > 0  # the network alone does pick on this junk
    assert n["strong"]["free.mrc"] < n["raw"]["free.mrc"] and n["default"]["free.mrc"] <= n["raw"]["free.mrc"]
    assert n["default"]["plain.mrc"] == n["strong"]["plain.mrc"] == n["raw"]["plain.mrc"] > 0  # sure: kept


def test_the_network_reads_the_rectangle_inside_border_bands_and_picks_come_back_in_the_micrographs_pixels(
        junk_mics, tmp_path):
    """A micrograph padded with flat bands (left 57 px, top 43 px, right 30 px) is picked exactly as the
    micrograph itself, the picks shifted by the padding (defaults.CROP_BANDS): the bands change nothing the
    network sees, and the coordinates are the padded micrograph's. (Without the crop the picks differ.)"""
    from hydrapicker import defaults
    from hydrapicker.picker import Picker
    from hydrapicker.types import Micrograph

    d, spec, mics = junk_mics
    _, sim = mics["plain"]
    img = sim.image
    padded = np.full((img.shape[0] + 43, img.shape[1] + 57 + 30), np.float32(np.median(img)) + 3 * img.std(),
                     np.float32)
    padded[43:, 57:57 + img.shape[1]] = img
    a = write_mrc(tmp_path / "plain.mrc", img, apix=spec.pixel_size)
    b = write_mrc(tmp_path / "padded.mrc", padded, apix=spec.pixel_size)
    picker = Picker(device="cpu", log=None)
    policy = picker.policy(spec.diameter_A, threshold=None, invalid_margin_A=0.0)  # no pick is near the bands
    plain = picker.pick_one(Micrograph(str(a)), spec.diameter_A, policy=policy)
    moved = picker.pick_one(Micrograph(str(b)), spec.diameter_A, policy=policy)
    assert defaults.CROP_BANDS and len(plain) > 10
    assert len(moved) == len(plain)
    assert np.allclose(moved.x, plain.x + 57) and np.allclose(moved.y, plain.y + 43)
    assert np.allclose(moved.fom, plain.fom)


def test_training_micrographs_are_cut_to_the_rectangle_inside_their_bands():
    """hydra train shows the network what picking shows it: a simulated micrograph with border bands is cut
    to the rectangle inside them, its truth and junk mask with it."""
    from hydrapicker.train import network_view

    spec = junk_target_specs()[0].replace(**{**OFF, "p_border": 1.0}, shape=(448, 448), coverage=(0.25, 0.3))
    sim = simulate_micrograph(spec, 0)
    bands = sim.info["border_bands"]
    image, xy, junk = network_view(sim)
    depth = {edge: d for _, edge, d in bands}
    top, bottom, left, right = (depth.get(e, 0) for e in range(4))
    assert image.shape == (448 - top - bottom, 448 - left - right) and junk.shape == image.shape
    assert np.array_equal(image, sim.image[top:448 - bottom, left:448 - right])
    assert len(xy) == len(sim.xy) and np.allclose(xy, sim.xy - [left, top])
    plain = simulate_micrograph(spec.replace(**OFF), 0)
    assert network_view(plain)[0] is plain.image  # no bands: the whole micrograph
