"""The few cryosparc-tools 4.x / 5.x differences the adapter meets, in one place.

5.x: one REST client ``cs.api``, ``job.model`` (pydantic), ``"?slot"`` optional input slots,
``stop(error="message")``, ``log(name=)`` updates a line in place, ``save_output(image=)``.
4.x: JSON-RPC ``cs.cli``, ``job.doc`` (dict), slot dicts with ``"prefix"``, no named log lines.
"""
from __future__ import annotations

from .extra import require


def tools_version() -> str:
    return require("cryosparc").__version__


def major_minor(version: str):
    """``"v4.7.1"`` / ``"5.0.3"`` -> ``(4, 7)``; None when it is not a release number (e.g. develop)."""
    parts = version.strip().lstrip("v").split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def is_v4() -> bool:
    mm = major_minor(tools_version())
    return mm is not None and mm[0] < 5


def server_version(cs) -> str:
    if hasattr(cs, "api"):
        return str(cs.api.config.get_version())
    return str(cs.cli.get_running_version())  # 4.x


def input_slots(slots):
    """5.x understands ``"?name"`` (optional); 4.x needs ``{"prefix", "dtype", "required"}``."""
    if not is_v4():
        return list(slots)
    out = []
    for s in slots:
        optional = s.startswith("?")
        name = s.lstrip("?")
        out.append({"prefix": name, "dtype": name, "required": not optional})
    return out


def job_outputs(job) -> dict:
    """``{output name: data type}`` of a job."""
    if hasattr(job, "model"):
        return {name: out.type for name, out in job.outputs.items()}
    return {g["name"]: g["type"] for g in job.doc.get("output_result_groups", [])}  # 4.x


def job_status(job) -> str:
    return str(job.model.status if hasattr(job, "model") else job.doc.get("status"))


def load_exposures_input(job, name: str):
    if is_v4():
        return job.load_input(name, slots=["micrograph_blob"])
    # the slots used, by name: "default" may leave out the optional ones, and without mscope_params/ctf every
    # pick's location/exp_group_id would be 0; a source that has neither still loads with its blob alone
    try:
        return job.load_input(name, slots=["micrograph_blob", "mscope_params", "ctf"])
    except Exception:
        try:
            return job.load_input(name, slots=["micrograph_blob", "mscope_params"])
        except Exception:
            return job.load_input(name, slots=["micrograph_blob"])


def log(job, text: str, *, name=None, level: str = "text"):
    """``job.log``; named (updated-in-place) lines on 5.x, plain lines on 4.x."""
    if name is not None and not is_v4():
        return job.log(text, level=level, name=name)
    return job.log(text, level=level)


def save_output(job, name: str, dset, image=None):
    if image is not None and not is_v4():
        return job.save_output(name, dset, image=image)
    return job.save_output(name, dset)
