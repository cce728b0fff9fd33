"""Multi-dataset training (hydrapicker.train, `hydra train`): a tiny run learns, resumes from its
checkpoint, runs phase 2 with one head per source dataset, and starts from another model with --init."""
import argparse
import json

import numpy as np
import pytest
import torch

from hydrapicker.checkpoint import load_checkpoint, read_checkpoint
from hydrapicker.commands import train as train_cmd
from hydrapicker.train import TrainConfig, run_training

QUIET = lambda *a, **k: None  # noqa: E731


def _args(out, *extra):
    """The TrainConfig that ``hydra train --out OUT <small settings> EXTRA`` builds."""
    p = argparse.ArgumentParser()
    train_cmd.add_args(p)
    ns = p.parse_args(["--out", str(out), "--datasets", "2", "--mics-per-dataset", "2", "--val-mics", "1",
                       "--crop", "96", "--batch", "4", "--log-every", "5", "--val-every", "0",
                       "--workers", "1", "--threads", "2", "--lr", "5e-3", *extra])
    return TrainConfig.from_namespace(ns)


def _log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_tiny_run_lowers_the_loss(tmp_path):
    out = tmp_path / "run"
    final = run_training(_args(out, "--steps", "150", "--phase2-steps", "0"), log=QUIET)
    losses = [r["loss"] for r in _log(out) if "loss" in r]
    assert len(losses) == 30
    assert np.median(losses[-10:]) < 0.75 * np.median(losses[:6]), losses  # median: single batches are noisy
    net, meta = load_checkpoint(final)
    assert meta["heads"] == ["generic"]
    assert 0.0 < meta["default_threshold"] < 1.0
    assert len(meta["training"]["datasets"]) == 2


def test_stopped_run_resumes_where_it_stopped_and_finishes_phase_2(tmp_path):
    out = tmp_path / "run"
    calls = {"n": 0}

    def stop_after_some_steps():
        calls["n"] += 1
        return calls["n"] > 12

    args = _args(out, "--steps", "20", "--phase2-steps", "10")
    assert run_training(args, log=QUIET, should_stop=stop_after_some_steps) == out / "checkpoint.pt"
    assert read_checkpoint(out / "checkpoint.pt")["epoch"] == 12
    assert not (out / "model.pt").exists()

    messages = []
    final = run_training(args, log=messages.append)
    assert any("resumed" in m and "step 12" in m for m in messages), messages
    steps = [r["step"] for r in _log(out) if "loss" in r]
    assert steps == sorted(steps) and steps[-1] == 30  # no step trained twice, none skipped
    ck = read_checkpoint(out / "checkpoint.pt")
    assert ck["epoch"] == 30 and ck["args"]["phase"] == 2
    net, meta = load_checkpoint(final)
    assert set(meta["heads"]) == {"generic", "ds00", "ds01"}
    assert set(meta["validation_AP_dataset_heads"]) == set(meta["validation_AP"])


def test_init_copies_body_and_generic_head_and_records_the_source(tmp_path):
    first = run_training(_args(tmp_path / "a", "--steps", "5", "--phase2-steps", "0"), log=QUIET)
    src, _ = load_checkpoint(first)
    second = _args(tmp_path / "b", "--steps", "0", "--phase2-steps", "0", "--seed", "3", "--init", str(first))
    net, meta = load_checkpoint(run_training(second, log=QUIET))
    for (k, a), (_, b) in zip(src.state_dict().items(), net.state_dict().items()):
        assert torch.allclose(a.float(), b.float(), atol=1e-2), k  # fp16 model files
    init = meta["training"]["init_from"]
    assert init["path"] == str(first) and len(init["datasets"]) == 2
    assert init["datasets"] != meta["training"]["datasets"]  # another seed: other source datasets


def test_init_with_another_preset_is_refused(tmp_path):
    first = run_training(_args(tmp_path / "a", "--steps", "2", "--phase2-steps", "0"), log=QUIET)
    from hydrapicker.errors import UserFacingError

    with pytest.raises(UserFacingError, match="preset"):
        run_training(_args(tmp_path / "b", "--preset", "thesis", "--steps", "1", "--init", str(first)),
                     log=QUIET)


def test_init_lineage_survives_a_resumed_run(tmp_path):
    first = run_training(_args(tmp_path / "a", "--steps", "3", "--phase2-steps", "0"), log=QUIET)
    calls = {"n": 0}

    def stop_after_two_steps():
        calls["n"] += 1
        return calls["n"] > 2

    args = _args(tmp_path / "b", "--steps", "6", "--phase2-steps", "0", "--seed", "3", "--init", str(first))
    run_training(args, log=QUIET, should_stop=stop_after_two_steps)
    _, meta = load_checkpoint(run_training(args, log=QUIET))  # resumed: --init is not applied again
    assert meta["training"]["init_from"]["path"] == str(first)


def test_init_grows_a_lite_model_into_the_deeper_preset_with_the_same_answers(tmp_path):
    first = run_training(_args(tmp_path / "a", "--steps", "3", "--phase2-steps", "0"), log=QUIET)
    src, _ = load_checkpoint(first)
    from hydrapicker.model import build_model
    from hydrapicker.train import init_from

    grown = build_model("lite_deep")
    init_from(grown, first)
    assert len(grown.body.layers) == len(src.body.layers) + 1
    src.eval(), grown.eval()
    x = torch.randn(2, 1, 96, 128)
    with torch.no_grad():
        assert torch.allclose(src(x), grown(x), atol=1e-5)  # the new block starts as the identity
    # through hydra train: the run starts from the lite model and trains the new block too
    deep = _args(tmp_path / "b", "--preset", "lite_deep", "--steps", "3", "--phase2-steps", "0", "--init", str(first))
    net, meta = load_checkpoint(run_training(deep, log=QUIET))
    assert meta["preset"] == "lite_deep" and meta["training"]["init_from"]["preset"] == "lite"
    new_norm = net.body.layers[-1].pair2[2]
    assert new_norm.weight.abs().sum() > 0  # no longer zero: trained


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where CUDA is missing")
def test_asking_for_cuda_without_it_is_a_clear_error_not_a_cpu_run(tmp_path):
    from hydrapicker.errors import UserFacingError

    with pytest.raises(UserFacingError, match="CUDA is not usable"):
        run_training(_args(tmp_path / "a", "--steps", "1", "--device", "cuda"), log=QUIET)
    assert not (tmp_path / "a").exists()  # nothing written: the device is checked first


def test_simulation_workers_do_not_hang_after_torch_ran_in_parallel(tmp_path):
    """Forked simulation workers prepare micrographs with torch; after the parent has run torch on several
    threads (loading a model, a forward pass), they hung in the inherited OpenMP pool (seen with
    `select_model.py` and `hydra train --init --workers 2`). In a fresh process, with a time limit."""
    import subprocess
    import sys

    script = (
        "import torch\n"
        "torch.set_num_threads(2)\n"
        "from hydrapicker.checkpoint import load_checkpoint\n"
        "net, meta = load_checkpoint(None)\n"
        "with torch.inference_mode():\n"
        "    net.eval()(torch.randn(1, 1, 256, 256), 'generic')\n"
        "from hydrapicker.simulate import source_dataset_specs\n"
        "from hydrapicker.train import simulate_sets\n"
        "sets = simulate_sets(source_dataset_specs(n=2, seed=5), 2, 16.0, 0.0, 0, workers=2, log=lambda *a: None)\n"
        "print('micrographs', sum(len(s.mics) for s in sets))\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "micrographs 4" in r.stdout, r.stderr


def test_the_config_takes_every_option_of_hydra_train():
    """The typed config and the command line cannot drift apart: every option has its field, same default."""
    from dataclasses import fields

    p = argparse.ArgumentParser()
    train_cmd.add_args(p)
    options = {a.dest: a.default for a in p._actions if a.dest != "help"}
    assert options.keys() == {f.name for f in fields(TrainConfig)}
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.name != "out"}
    assert {k: v for k, v in options.items() if k != "out"} == defaults


def test_distill_keeps_the_generic_head_near_the_teacher_on_clean_datasets_only(tmp_path):
    from hydrapicker.model import GENERIC
    from hydrapicker.simulate import source_dataset_specs
    from hydrapicker.simulate.artefacts import is_clean

    teacher = run_training(_args(tmp_path / "t", "--steps", "5", "--phase2-steps", "0"), log=QUIET)
    specs = source_dataset_specs(n=4, seed=6, junk_fraction=0.5)
    clean = {s.name for s in specs if is_clean(s)}
    assert 0 < len(clean) < 4  # the seed gives both kinds

    def student(name, *extra):
        args = _args(tmp_path / name, "--datasets", "4", "--junk-fraction", "0.5", "--seed", "6", "--steps",
                     "40", "--phase2-steps", "0", "--init", str(teacher), "--lr", "1e-2", *extra)
        return run_training(args, log=QUIET), _log(tmp_path / name)

    (with_d, log_d), (without, log_n) = student("d", "--distill", str(teacher), "--distill-weight", "20"), student("n")
    steps = [r for r in log_d if "loss" in r]
    assert all(("distill" in r) == (r["dataset"] in clean) for r in steps)
    assert any("distill" in r for r in steps) and not any("distill" in r for r in log_n)

    net_t, _ = load_checkpoint(teacher)
    img = torch.randn(1, 1, 96, 96, generator=torch.Generator().manual_seed(1))

    def gap(path):
        net, _ = load_checkpoint(path)
        with torch.no_grad():
            a = torch.sigmoid(net.heads[GENERIC](net.body(img))[:, 2])
            b = torch.sigmoid(net_t.heads[GENERIC](net_t.body(img))[:, 2])
        return float((a - b).abs().mean())

    assert gap(with_d) < gap(without)  # the teacher's answers are kept


def test_junk_weight_gives_junk_laden_training_micrographs_their_loss_weights():
    """--junk-weight W: the training micrographs that carry junk get weights W around it (1 elsewhere), the
    others none, and the same micrographs as without it; W = 1 (the default) gives no weights at all."""
    from hydrapicker.simulate import source_dataset_specs
    from hydrapicker.train import simulate_sets

    specs = [s.replace(shape=(384, 384)) for s in source_dataset_specs(n=3, seed=10, junk_fraction=1.0)]
    plain = simulate_sets(specs, 2, 16.0, 0.0, 0, log=QUIET)
    weighted = simulate_sets(specs, 2, 16.0, 0.0, 0, log=QUIET, junk_weight=3.0)
    assert all(m.weight is None for s in plain for m in s.mics)
    mics = [(a, b) for s, t in zip(plain, weighted) for a, b in zip(s.mics, t.mics)]
    assert all(np.array_equal(a.image, b.image) for a, b in mics)
    got = [b.weight for _, b in mics if b.weight is not None]
    assert got and all(set(np.unique(w)) <= {1.0, 3.0} and (w == 3.0).any() for w in got)
    assert all(w.shape == b.image.shape for (_, b), w in zip([m for m in mics if m[1].weight is not None], got))
