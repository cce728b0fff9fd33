"""A few-shot head's own centre refiner (hydrapicker.refine_adapt.teach_labelled_refiner, `hydra finetune`):
the body's refiner taught the labels, written beside the model, which names it; it refines that head's picks
and no other head that learned its own centres; too few labels or a body without a refiner keep the head's
own centres; and, end to end, it centres a two-domain particle better than the head alone."""
import shutil
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hydrapicker.checkpoint import load_checkpoint, make_meta, save_checkpoint, update_meta
from hydrapicker.metrics import evaluate
from hydrapicker.model import build_model
from hydrapicker.picker import Picker
from hydrapicker.refine import MAX_SHIFT_D, Refiner
from hydrapicker.refine_adapt import LABELLED, labelled_refiner_path, teach_labelled_refiner

QUIET = dict(log=lambda *a, **k: None)
FEW_STEPS = replace(LABELLED, steps=3)


def _labelled(n_per_mic, n_mics=2, size=192, seed=0):
    """Prepared micrographs as ``finetune.load_labelled`` makes them: images with label positions inside."""
    rng = np.random.default_rng(seed)
    return [SimpleNamespace(image=rng.normal(size=(size, size)).astype(np.float32),
                            xy=rng.uniform(40, size - 40, (n_per_mic, 2))) for _ in range(n_mics)]


def _fewshot_model(path, heads=("prot", "other")):
    """The shipped model's file as a few-shot model whose heads ``heads`` learned their centres from labels."""
    shutil.copyfile(Picker(**QUIET).meta["path"], path)
    update_meta(path, finetune={h: {"lambda_loc": 1.0} for h in heads})
    return path


def test_the_labels_teach_a_refiner_beside_the_model_that_refines_only_their_head(tmp_path, capsys):
    model = _fewshot_model(tmp_path / "prot.pt")
    net, meta = load_checkpoint(model)
    res = teach_labelled_refiner(net, meta, _labelled(20), "prot", model, settings=FEW_STEPS, **QUIET)
    assert res.accepted and res.path == labelled_refiner_path(model) == tmp_path / "prot_refiner.pt"
    refiner = Refiner(res.path)
    assert refiner.fits(net, meta) and refiner.taught_head == "prot"
    assert refiner.meta["adaptation"]["labels"] == 40
    update_meta(model, refiner=res.path.name)  # what finetune writes
    said = []
    picker = Picker(model, log=said.append)
    assert picker.refiner.path == str(res.path)
    assert any(f"centres refined by {res.path} (taught the labels of head 'prot')" in s for s in said), said
    assert picker._refines("prot") and picker._refines("generic")
    assert not picker._refines("other")  # learned its own centres from other labels
    update_meta(model, finetune={"prot": {"lambda_loc": 1.0, "centre_refiner": {"taught": True, "labels": 40,
                                                                             "file": res.path.name}},
                                 "other": {"lambda_loc": 1.0, "centre_refiner": {"taught": False,
                                                                              "reason": "too few labels (5)"}}})
    from hydrapicker.cli import main as hydra

    assert hydra(["info", str(model)]) == 0
    out = capsys.readouterr().out
    assert "prot: re-centred by prot_refiner.pt, the centre refiner taught its 40 labels" in out
    assert "other: its own (the model names no refiner taught its labels: too few labels (5))" in out
    # the shipped refiner knows no few-shot head: the head keeps its own centres
    shipped = Picker(model, refine="shipped", **QUIET)
    assert not shipped._refines("prot") and shipped._refines("generic")
    assert not Picker(model, refine=False, **QUIET)._refines("prot")


def test_too_few_labels_or_a_body_without_a_refiner_keep_the_heads_own_centres(tmp_path):
    model = _fewshot_model(tmp_path / "few.pt")
    net, meta = load_checkpoint(model)
    res = teach_labelled_refiner(net, meta, _labelled(10), "prot", model, settings=FEW_STEPS, **QUIET)
    assert not res.accepted and "too few labels" in res.reason and res.record["labels"] == 20
    torch.manual_seed(0)
    fresh = build_model("lite")  # a body no shipped refiner was made for
    said = []
    res = teach_labelled_refiner(fresh, make_meta(fresh), _labelled(30), "prot", tmp_path / "fresh.pt",
                                 settings=FEW_STEPS, log=said.append)
    assert not res.accepted and "no centre refiner was made" in res.reason and said
    assert not list(tmp_path.glob("*_refiner.pt"))


def test_only_a_head_taught_centres_by_labels_teaches_the_refiner(tmp_path, monkeypatch):
    """finetune asks for the labelled refiner with real labels (``lambda_loc`` > 0), not for an adapted head's
    pseudo-labels (``lambda_loc`` 0) nor with ``centre_refiner=False`` (``hydra finetune --no-refiner``)."""
    import hydrapicker.refine_adapt as ra
    from conftest import write_simulated_set
    from hydrapicker.commands import finetune as command
    from hydrapicker.finetune import finetune
    from hydrapicker.simulate import get_target

    calls = []
    monkeypatch.setattr(ra, "teach_labelled_refiner", lambda net, meta, mics, head, out, *a, **k:
                        calls.append((head, out)) or ra.RefinerAdaptation(False, None, "test", {}))
    spec = get_target("t_proteasome").replace(shape=(256, 256), p_carbon=0.0)
    mics, truth = write_simulated_set(spec, tmp_path, range(2))
    torch.manual_seed(0)
    net = build_model("lite")
    base = save_checkpoint(tmp_path / "base.pt", net, make_meta(net, default_threshold=0.3))
    fast = dict(crop=64, batch=4, steps_per_epoch=2, epochs=1, working_scale=1.0, **QUIET)
    finetune(base, mics, truth, spec.diameter_A, "a", out=tmp_path / "a.pt", lambda_loc=0.0, **fast)
    finetune(base, mics, truth, spec.diameter_A, "b", out=tmp_path / "b.pt", centre_refiner=False, **fast)
    assert calls == []
    out = finetune(base, mics, truth, spec.diameter_A, "c", out=tmp_path / "c.pt", **fast)
    assert calls == [("c", tmp_path / "c.pt")]
    assert load_checkpoint(out)[1]["finetune"]["c"]["centre_refiner"]["taught"] is False
    p = __import__("argparse").ArgumentParser()
    command.add_args(p)
    given = ["--mics", "m.star", "--coords", "c", "--diameter", "100", "--name", "x"]
    assert p.parse_args(given).centre_refiner is True and p.parse_args(given + ["--no-refiner"]).centre_refiner is False


@pytest.mark.slow
def test_a_few_shot_head_with_its_refiner_centres_a_two_domain_particle_better(tmp_path, capsys):
    """``hydra finetune``'s default on a held-out two-domain particle (the hardest to centre): the model names
    the refiner taught its labels, whose picks match the truth better under the IoU rule than the head's
    own, and no pick moves further than the refiner's bound."""
    from conftest import write_simulated_set
    from hydrapicker.finetune import finetune
    from hydrapicker.simulate import get_target

    torch.set_num_threads(2)
    spec = get_target("t_dumbbell_pp").replace(shape=(768, 768))
    mics, truth = write_simulated_set(spec, tmp_path / "train", range(4))
    test_mics, test_truth = write_simulated_set(spec, tmp_path / "test", range(100, 104))
    out = finetune(None, mics, truth, spec.diameter_A, "dumbbell", out=tmp_path / "d.pt", epochs=12, patience=6,
                   working_scale=1.0, **QUIET)
    assert load_checkpoint(out)[1]["refiner"] == "d_refiner.pt" and (tmp_path / "d_refiner.pt").is_file()
    from hydrapicker.cli import main as hydra

    assert hydra(["info", str(out)]) == 0
    assert "dumbbell: re-centred by d_refiner.pt, the centre refiner taught its" in capsys.readouterr().out

    def picks(picker):
        pol = picker.policy(spec.diameter_A, "dumbbell", threshold=0.01)
        return {r.micrograph.name: r.picks for r in picker.pick(test_mics, spec.diameter_A, head="dumbbell",
                                                                  policy=pol)}

    refined, own = picks(Picker(out, **QUIET)), picks(Picker(out, refine=False, **QUIET))
    t = {k: v.xy() for k, v in test_truth.items()}
    ap = {k: evaluate(p, t, spec.diameter_px)["AP"] for k, p in (("refined", refined), ("own", own))}
    assert ap["refined"] > ap["own"] + 0.02, ap
    for name, p in refined.items():
        d = np.hypot(*(p.xy()[:, None, :] - own[name].xy()[None, :, :]).transpose(2, 0, 1)).min(1)
        assert d.max() <= MAX_SHIFT_D * spec.diameter_px * 1.01
