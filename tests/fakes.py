"""Test doubles for the core's Picker and few-shot entry point, built with ``mock.create_autospec``: a call
with arguments that the real function or method would refuse fails the test (a fake copied by hand would
accept it), and the picks go through the real :func:`hydrapicker.postprocess.finalize`."""
from __future__ import annotations

import dataclasses
from unittest import mock

import numpy as np

from hydrapicker.picker import Picker
from hydrapicker.postprocess import Candidates, PickPolicy, rank, select
from hydrapicker.types import PickResult, Picks


def speced(fake, spec=Picker):
    """``fake`` behind ``mock.create_autospec(spec)``: its ``pick`` answers, with the spec's signature
    checked on every call; its attributes (``meta``, ``device``, lists it records into) are shared."""
    m = mock.create_autospec(spec, instance=True)
    for name, value in vars(fake).items():
        setattr(m, name, value)
    m.pick.side_effect = fake.pick
    # a data set's class averages (--adapt): a fake's dozen candidates are too few, as the real Picker says
    m.class_references.side_effect = lambda mics, diameter_A, head, policy: (None, [])
    m.class_refs = getattr(fake, "class_refs", None)
    return m


def finalized(mic, candidates: Picks, shape, diameter_A, policy=None, info=None) -> PickResult:
    """The PickResult the real Picker gives for these candidates: through rank/select with the policy
    (None: all above the floor), duplicate suppression off (fake candidates sit closer than a diameter) and
    micrograph evidence off (the fakes' dozen candidates would all be weighed down; the policy a job builds
    is checked on its own: test_relion_plumbing, test_cryosparc_adapter)."""
    policy = policy or PickPolicy(min_distance_A=0.5 * diameter_A)
    policy = dataclasses.replace(policy, min_distance_A=0.0)
    c = Candidates(np.stack([candidates.x, candidates.y], 1), candidates.fom, tuple(shape[-2:]), 1.0)
    ranked = rank(c, policy)
    chosen = {}  # the threshold select() used, as the real Picker records it
    picks = select(ranked, policy, chosen)
    return PickResult(mic, picks, None, {"shape": tuple(shape), **chosen, **(info or {})}, ranked)


def fake_finetune(monkeypatch, check=None) -> list:
    """Replace ``hydrapicker.finetune.finetune`` by ``mock.create_autospec`` of the real one: each call is
    recorded with every argument by name (defaults filled in), ``check(arguments)`` runs, and a dummy
    model file is written to ``out``. A call the real function would refuse fails the test."""
    import inspect
    from pathlib import Path

    import hydrapicker.finetune as real

    calls = []
    signature = inspect.signature(real.finetune)

    def record(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        if check is not None:
            check(arguments)
        calls.append(arguments)
        Path(arguments["out"]).write_bytes(b"model")
        return Path(arguments["out"])

    monkeypatch.setattr(real, "finetune", mock.create_autospec(real.finetune, side_effect=record))
    return calls
