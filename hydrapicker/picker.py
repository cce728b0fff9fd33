"""The :class:`Picker`: a model on a device that picks lists of micrographs.

It owns reading (background threads, ahead of the network), rescaling, normalisation, tiled
inference with bounded memory, decoding, duplicate suppression and edge exclusion. One bad micrograph is
reported in its :class:`PickResult` and skipped; the others are picked.

CPU: a reader thread reads and prepares the next micrograph while the network runs on this one.
CUDA: reader threads read into page-locked memory; the upload is asynchronous, rescaling and normalisation
run on the GPU (:func:`hydrapicker.preprocess.prepare_t`), and consecutive micrographs of one shape go
through the network together (``batch``), in bf16, with cuDNN autotuning.
"""
from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple, Optional

import numpy as np

from . import defaults
from .errors import MicrographError, PixelSizeError, UserFacingError
from .types import Micrograph, PickResult, Picks

# (quarter turns, flip left-right first) in the order test-time augmentation uses them
DIHEDRAL = ((0, False), (2, False), (1, True), (3, True), (1, False), (3, False), (0, True), (2, True))


class NetOutputs(NamedTuple):
    """What the network says of one image (or, with a leading batch axis, of a batch): ``grid`` the head's
    raw outputs (3, H/stride, W/stride); ``cmap`` the centre refiner's map at the body's stride, or None;
    ``half_cell`` the head's outputs on the grid shifted by half a cell, (3, H/stride + 1, W/stride + 1)
    with cell m centred at m x stride - 0.5, or None (``defaults.HALF_CELL_GRID`` off)."""

    grid: np.ndarray
    cmap: Optional[np.ndarray] = None
    half_cell: Optional[np.ndarray] = None

    def item(self, i: int) -> "NetOutputs":
        """The ``i``-th image's outputs of a batch's."""
        return NetOutputs(*(None if a is None else a[i] for a in self))


def select_device(device: str = "auto"):
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> torch.device; loud error if CUDA is unusable."""
    import torch

    device = (device or "auto").strip().lower()
    if device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device.isdigit():
        device = f"cuda:{device}"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserFacingError(
                f"device {device!r} was asked for but CUDA is not usable here (torch {torch.__version__}, "
                f"built with CUDA {torch.version.cuda}); install a CUDA build of torch matching your "
                f"driver, or use --device cpu")
        dev = torch.device(device)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserFacingError(f"device {device!r} asked for but only {torch.cuda.device_count()} "
                                  f"CUDA device(s) are visible")
        return dev
    raise UserFacingError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")


def configure_torch(threads: Optional[int] = None, device=None) -> None:
    """Process-wide torch settings, for entry points only (a library call must not change them): the
    CPU thread count, and on CUDA cuDNN autotuning (micrographs of a dataset share a shape, so cuDNN
    picks its fastest kernels once)."""
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    if device is not None and getattr(device, "type", str(device)).startswith("cuda"):
        torch.backends.cudnn.benchmark = True


def refined(refiner, cmap, prepared, ranked: Picks, policy, invalid=None) -> Picks:
    """``ranked``'s picks moved to the centres ``refiner`` reads in the centre map ``cmap`` of the
    ``prepared`` micrograph, ranked again by the policy's rules (edges, excluded regions) with duplicates
    suppressed at ``defaults.REFINED_MIN_DISTANCE_DIAMETERS`` (or the policy's minimum distance when that
    is smaller): picks that now sit on one particle are one pick, the higher FOM one. Highest FOM first."""
    from dataclasses import replace

    from .postprocess import Candidates, rank

    origin = np.asarray(prepared.origin, np.float64)[None, :]
    xy = refiner.refine(cmap, prepared.scale_xy, np.stack([ranked.x, ranked.y], axis=1) - origin) + origin
    diameter_A = refiner.extent_px / float(np.mean(prepared.scale_xy)) * float(prepared.pixel_size)
    again = replace(policy, min_distance_A=min(float(policy.min_distance_A),
                                               defaults.REFINED_MIN_DISTANCE_DIAMETERS * diameter_A))
    return rank(Candidates(xy, ranked.fom.copy(), prepared.shape, prepared.pixel_size), again, invalid)


def shifted(picks: Picks, dx: float, dy: float) -> Picks:
    """``picks`` moved by (dx, dy) px (between a micrograph's and a prepared region's frame)."""
    return Picks(picks.x + dx, picks.y + dy, picks.fom.copy())


def named_refiner_path(meta: dict) -> Optional[Path]:
    """The centre refiner a model file names (``meta['refiner']``: a file name, beside the model file), or None."""
    name, model = meta.get("refiner"), meta.get("path")
    return Path(str(model)).parent / str(name) if name and model else None


class Picker:
    """Holds a HydraPicker model on a device.

    >>> picker = Picker()                       # shipped generic model, best device
    >>> for res in picker.pick(mics, diameter_A=150):
    ...     print(res.micrograph.name, len(res.picks))
    """

    def __init__(self, model=None, device: str = "auto", log: Callable = print, tile: Optional[int] = None,
                 tta: Optional[int] = None, batch: Optional[int] = None, readers: Optional[int] = None, refine="auto",
                 half_cell: Optional[bool] = None):
        """``tta``: dihedral views averaged per micrograph (None: ``defaults.TTA``). ``batch``: micrographs
        per forward pass (default 8 on CUDA, 1 on CPU); ``readers``: reading threads (default 4 on CUDA, 1 on
        CPU). ``refine``: the centre refiner (:mod:`hydrapicker.refine`)
        that re-centres every pick: ``"auto"`` the shipped one when ``defaults.REFINE_CENTRES`` (and it is
        installed and made for this model's body: the shipped models and every head fine-tuned or adapted
        from them), ``"shipped"`` the shipped one whatever the default, a refiner file's path, or
        None/False (centres as the detector decodes them). ``half_cell``: the head also reads the grid
        shifted by half a cell (None: ``defaults.HALF_CELL_GRID``). Thread counts and cuDNN flags are the
        process's: :func:`configure_torch` at the entry point sets them."""
        import torch

        from .checkpoint import load_checkpoint

        self.log = log or (lambda *a, **k: None)
        self.device = select_device(device)
        self.net, self.meta = load_checkpoint(model)
        self._apix_source: dict = {}  # micrograph path -> where its pixel size came from (results' info)
        self.net.to(self.device).eval()
        if self.device.type == "cpu":
            self.net.to(memory_format=torch.channels_last)
        else:
            torch.cuda.set_device(self.device)
        self.stride = int(self.meta["stride"])
        self.extent_px = float(self.meta["extent_px"])
        tta = defaults.TTA if tta is None else tta
        if tta not in (1, 2, 4, 8):
            raise UserFacingError(f"--tta {tta}: use 1 (off), 2, 4 or 8 orientations")
        self.tta = int(tta)
        cuda = self.device.type == "cuda"
        self.batch = max(1, int(batch or (8 if cuda else 1)))
        self.readers = max(1, int(readers or (min(4, os.cpu_count() or 1) if cuda else 1)))
        self.half_cell = defaults.HALF_CELL_GRID if half_cell is None else bool(half_cell)
        body_stride = int(self.net.preset.body_stride)
        # the half-cell grid: the heads on the body's features padded by half a cell (in body pixels)
        self.half_cell_pad = ((self.stride // 2) // body_stride
                              if self.half_cell and (self.stride // 2) % body_stride == 0 else 0)
        self.tile = tile or self.net.preset.tile
        self.margin = self.net.preset.tile_margin
        self.log(f"[hydra] model {self.meta.get('path')} (preset {self.meta.get('preset')}, "
                 f"heads {', '.join(self.meta['heads'])}) on device {self.device}, "
                 f"{self.tta} test-time view{'s' if self.tta > 1 else ''} per micrograph (--tta)"
                 f"{', each read on two grids half a cell apart (--half-cell)' if self.half_cell_pad else ''}")
        self.refine = refine  # what was asked for: pickers derived from this one (hydra pick --adapt) ask the same
        self.refiner = self._load_refiner(refine)
        self._said_own: set = set()  # heads whose "not refined" line was logged
        from .class_centres import ClassReferences

        # a data set's class averages (with_class_references; an adapted model keeps its own); None: each
        # micrograph's own
        self.class_refs = ClassReferences.from_meta(self.meta.get("class_references"))

    def _refines(self, head: str) -> bool:
        """Are ``head``'s picks refined? When a refiner is loaded, unless the head learned its own centres
        from labelled picks (a few-shot head: :func:`hydrapicker.checkpoint.head_learned_centres`) and the
        refiner was not taught those labels (:func:`hydrapicker.refine_adapt.teach_labelled_refiner`)."""
        from .checkpoint import head_learned_centres

        if self.refiner is None:
            return False
        return not head_learned_centres(self.meta, head) or self.refiner.taught_head == head

    def _say_refinement(self, head: str) -> None:
        """Log once per head that a loaded refiner leaves its picks alone."""
        if self.refiner is not None and not self._refines(head) and head not in self._said_own:
            self._said_own.add(head)
            self.log(f"[hydra] centres: head {head!r} learned its own from labelled picks; not refined")

    def _load_refiner(self, refine):
        """The :class:`~hydrapicker.refine.Refiner` to use, or None (see ``refine`` in the constructor; with
        ``"auto"``, a model file that names its own refiner, ``meta['refiner']``, is refined by it)."""
        from .refine import SHIPPED_REFINERS, first_fitting

        if refine is None or refine is False:
            return None
        auto = isinstance(refine, str) and refine == "auto"
        if auto and self.meta.get("refiner"):  # a model adapted with its own refiner (--adapt)
            own = self._own_refiner()
            if own is not None:
                return self._using(own, f" (taught the labels of head {own.taught_head!r})" if own.taught_head
                                   else " (adapted with this model)")
        if auto and not defaults.REFINE_CENTRES:
            return None
        shipped = auto or refine == "shipped"
        paths = [p for p in SHIPPED_REFINERS if p.exists()] if shipped else [refine]
        if not paths:
            if auto:
                self.log("[hydra] centres: as the detector decodes them (no centre refiner installed)")
                return None
            paths = [SHIPPED_REFINERS[0]]  # Refiner says that it is missing
        refiner = first_fitting(paths, self.net, self.meta, self.device)  # the one made for this model's body
        if refiner is None:
            named = ("the shipped centre refiners read the bodies of the models they were made for" if shipped
                     else f"the centre refiner {paths[0]} reads the body of the model it was made for")
            why = f"{named}, and model {self.meta.get('path')} has another body"
            if auto:  # e.g. a model trained from scratch: its own centres
                self.log(f"[hydra] centres: as the detector decodes them ({why})")
                return None
            raise UserFacingError(f"{why}: give the refiner made for this model's body, or --no-refine")
        return self._using(refiner)

    def _using(self, refiner, why: str = ""):
        """``refiner``, ready on this picker's device, and said."""
        import torch

        if self.device.type == "cpu":
            refiner.head.to(memory_format=torch.channels_last)
        self.log(f"[hydra] centres refined by {refiner.path}{why} (a pick moves by at most "
                 f"{refiner.max_shift_D:g} diameters)")
        return refiner

    def _own_refiner(self):
        """The refiner the model file names (``meta['refiner']``, a file beside it), or None when it is
        missing or unreadable or made for another body (said; the usual rule then applies)."""
        from .refine import first_fitting

        own = named_refiner_path(self.meta)
        try:
            found = own is not None and own.is_file()
            refiner = first_fitting([own], self.net, self.meta, self.device) if found else None
        except UserFacingError as e:
            self.log(f"[hydra] centres: the refiner this model names cannot be read ({e})")
            return None
        if refiner is None:
            self.log(f"[hydra] centres: the model names the centre refiner {own}, which is missing or made for "
                     f"another body; give --refiner FILE, or keep it beside the model")
        return refiner

    @property
    def default_head(self) -> str:
        """The model's own choice: the newest few-shot head of a fine-tuned model, else ``generic``."""
        from .checkpoint import default_head

        return default_head(self.meta)

    @property
    def default_threshold(self) -> float:
        """The calibrated threshold of :attr:`default_head`."""
        return self.threshold_for(self.default_head)

    def with_model(self, model, log: Optional[Callable] = None) -> "Picker":
        """A picker of another model file (an adapted, few-shot or rescaled copy of this one's) with this
        picker's device, views, half-cell grid, batching, readers and refiner choice."""
        return Picker(model, device=str(self.device), log=log, tta=self.tta, batch=self.batch, readers=self.readers,
                      refine=self.refine, half_cell=self.half_cell)

    def threshold_for(self, head: str = "generic") -> float:
        """The calibrated threshold of ``head`` (few-shot heads carry their own)."""
        from .checkpoint import threshold_for

        return threshold_for(self.meta, head)

    # -- one micrograph -------------------------------------------------------------------------
    def _read(self, mic: Micrograph, diameter_A: float, find_invalid: bool = False):
        """Reader thread: the file as a float32 tensor with its pixel size; on the CPU also prepared (so
        preparation overlaps the network), for CUDA page-locked for an asynchronous upload. Returns
        (loaded, seconds, regions): ``regions`` the border bands and dead areas of the micrograph as stored
        (:func:`hydrapicker.regions.find_regions`) when ``find_invalid``, else None; with border bands the
        rectangle inside them is what is prepared (``defaults.CROP_BANDS``; :meth:`_prepared` places it in
        the micrograph's frame)."""
        import torch

        from .preprocess import _cpu_tensor, pixel_size_and_source, prepare_t, read_mrc

        t0 = time.perf_counter()
        data, header_apix = read_mrc(mic.path, looked_in=(mic.meta or {}).get("looked_in"))
        apix, source = pixel_size_and_source(mic.path, mic.pixel_size, header_apix,
                                             (mic.meta or {}).get("apix_source", "the caller"))
        self._apix_source[mic.path] = source
        t = _cpu_tensor(data)  # copies the memory map: this is the actual read
        full, origin = tuple(t.shape), (0, 0)
        regions = None
        if find_invalid:
            from .regions import find_regions

            regions = find_regions(t.numpy())
            inside = regions.network_region(diameter_A / apix)
            if inside is not None:  # the network reads the rectangle inside the bands (defaults.CROP_BANDS)
                t = t[inside].contiguous()
                origin = (inside[1].start, inside[0].start)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # per thread: page-locked memory of this rank's GPU, not GPU 0's
            return ("raw", t.pin_memory(), apix, full, origin), time.perf_counter() - t0, regions
        return (("prepared", prepare_t(t, apix, diameter_A, self.extent_px, path=mic.path, owned=True), full, origin),
                time.perf_counter() - t0, regions)

    def _prepared(self, loaded, mic: Micrograph, diameter_A: float):
        """What a reader returned -> :class:`Prepared` with its image on the device, in the micrograph's frame
        (``shape`` the micrograph's; ``origin`` and ``region`` when only the part inside its bands was read)."""
        from dataclasses import replace

        from .preprocess import prepare_t

        if loaded[0] == "prepared":
            _, prepared, full, origin = loaded
        else:
            _, t, apix, full, origin = loaded
            prepared = prepare_t(t.to(self.device, non_blocking=True), apix, diameter_A, self.extent_px,
                                 path=mic.path, owned=True)  # a copy on the device
        if tuple(prepared.shape) == tuple(full):
            return prepared
        return replace(prepared, shape=full, origin=origin, region=prepared.shape)

    def _to_device(self, image):
        import torch

        from .preprocess import _cpu_tensor

        t = image if isinstance(image, torch.Tensor) else _cpu_tensor(np.ascontiguousarray(image))
        return t.to(self.device, non_blocking=True)

    def _grid(self, image, head: str) -> np.ndarray:
        """Raw outputs for ``image`` (tensor or array), see :meth:`_outputs`."""
        return self._outputs(image, head).grid

    def _outputs(self, image, head: str) -> "NetOutputs":
        """:class:`NetOutputs` of ``image`` (tensor or array): plain, or averaged over :attr:`tta` dihedral
        orientations."""
        image = self._to_device(image)
        if self.tta == 1:
            return self._infer(image, head)
        import torch
        import torch.nn.functional as F

        s = self.stride
        ny, nx = image.shape
        padded = F.pad(image, (0, (-nx) % s, 0, (-ny) % s))  # whole cells: orientations share a grid
        views = []
        for k, flip in DIHEDRAL[:self.tta]:
            view = torch.rot90(torch.flip(padded, dims=(1,)) if flip else padded, k, dims=(0, 1))
            views.append((k, flip, self._infer(view.contiguous(), head)))
        return self._merge_views(views, (ny, nx))

    def _merge_views(self, views: list, shape: tuple) -> "NetOutputs":
        """``[(k, flip, NetOutputs)]`` of the views of one image of ``shape`` -> :class:`NetOutputs` in the
        image's own frame. The half-cell grid's cells sit at multiples of the stride of the stride-padded
        image, a lattice every dihedral view maps onto itself, so its views merge like the grid's."""
        from .postprocess import merge_orientations

        cmap = None
        if views[0][2].cmap is not None:  # merged like the grid (its logit first, offsets in cells)
            from .refine import OFFSET_CELLS

            sb = self.refiner.stride
            cmap = merge_orientations([(k, f, o.cmap) for k, f, o in views], OFFSET_CELLS,
                                      logit_channel=0)[:, :-(-shape[0] // sb), :-(-shape[1] // sb)]
        half = None
        if views[0][2].half_cell is not None:
            half = merge_orientations([(k, f, o.half_cell) for k, f, o in views])
        return NetOutputs(merge_orientations([(k, f, o.grid) for k, f, o in views]), cmap, half)

    def _forward(self, batch, head: str) -> "NetOutputs":
        """(B, 1, H, W) tensor on the device -> :class:`NetOutputs` of the batch (arrays with a leading B)."""
        import torch
        import torch.nn.functional as F

        pad = self.half_cell_pad

        def run(x):
            f = self.net.body(x)  # the heads read the body's features once
            g = self.net.heads[head](f)
            c = self.refiner.head(f) if self._refines(head) else None
            # the head on features padded by half a cell: its cells are centred on the grid's cell corners
            h = self.net.heads[head](F.pad(f, (pad, pad, pad, pad))) if pad else None
            return g, c, h

        def numpy(t):
            return None if t is None else t.float().cpu().numpy()

        with torch.inference_mode():
            if self.device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    out = run(batch)
            else:
                out = run(batch.contiguous(memory_format=torch.channels_last))
            return NetOutputs(*(numpy(t) for t in out))

    def _infer(self, image, head: str) -> "NetOutputs":
        """Rescaled, normalised image (tensor) -> :class:`NetOutputs`, tiled when large."""
        import torch.nn.functional as F

        from .preprocess import tiles

        s = self.stride
        sb = self.refiner.stride if self._refines(head) else None
        ny, nx = image.shape
        gh, gw = -(-ny // s), -(-nx // s)
        out = np.zeros((3, gh, gw), np.float32)
        cmap = None if sb is None else np.zeros((3, -(-ny // sb), -(-nx // sb)), np.float32)
        half = np.zeros((3, gh + 1, gw + 1), np.float32) if self.half_cell_pad else None
        for y0, y1, x0, x1, cy0, cy1, cx0, cx1 in tiles((ny, nx), self.tile, self.margin, s):
            # windows are aligned to the stride so that grid cells line up with the full image
            y0, x0 = (y0 // s) * s, (x0 // s) * s
            win = image[y0:y1, x0:x1]
            ph, pw = (-win.shape[0]) % s, (-win.shape[1]) % s
            if ph or pw:
                win = F.pad(win, (0, pw, 0, ph))
            o = self._forward(win[None, None], head)
            g = o.grid[0]
            gy0, gy1, gx0, gx1 = cy0 // s, -(-cy1 // s), cx0 // s, -(-cx1 // s)
            out[:, gy0:gy1, gx0:gx1] = g[:, gy0 - y0 // s: gy1 - y0 // s, gx0 - x0 // s: gx1 - x0 // s]
            if cmap is not None:
                c = o.cmap[0]
                by0, by1, bx0, bx1 = cy0 // sb, -(-cy1 // sb), cx0 // sb, -(-cx1 // sb)
                cmap[:, by0:by1, bx0:bx1] = c[:, by0 - y0 // sb: by1 - y0 // sb, bx0 - x0 // sb: bx1 - x0 // sb]
            if half is not None:  # cell m centred at m x stride - 0.5: those in the tile's core
                hy0, hx0 = -(-cy0 // s), -(-cx0 // s)
                hy1, hx1 = -(-cy1 // s) + (cy1 >= ny), -(-cx1 // s) + (cx1 >= nx)
                half[:, hy0:hy1, hx0:hx1] = o.half_cell[0][:, hy0 - y0 // s: hy1 - y0 // s, hx0 - x0 // s: hx1 - x0 // s]
        return NetOutputs(out, cmap, half)

    def _batchable(self, image) -> bool:
        """One tile: such images of one shape can share forward passes (one per orientation)."""
        return self.batch > 1 and max(image.shape) <= self.tile

    def _infer_many(self, images: list, head: str) -> list:
        """:class:`NetOutputs` of several images; images of one shape that fit one tile share forward
        passes, one per test-time orientation."""
        import torch
        import torch.nn.functional as F

        if len(images) == 1 or not all(self._batchable(im) and im.shape == images[0].shape for im in images):
            return [self._outputs(im, head) for im in images]
        s = self.stride
        ny, nx = images[0].shape
        stack = F.pad(torch.stack(images)[:, None], (0, (-nx) % s, 0, (-ny) % s))
        if self.tta == 1:
            o = self._forward(stack, head)
            sb = None if o.cmap is None else self.refiner.stride
            gh, gw = -(-ny // s), -(-nx // s)
            return [NetOutputs(gi[:, :gh, :gw], None if o.cmap is None else o.cmap[i][:, :-(-ny // sb), :-(-nx // sb)],
                               None if o.half_cell is None else o.half_cell[i][:, :gh + 1, :gw + 1])
                    for i, gi in enumerate(o.grid)]
        views = []  # (k, flip, NetOutputs of the batch)
        for k, flip in DIHEDRAL[:self.tta]:
            view = torch.rot90(torch.flip(stack, dims=(3,)) if flip else stack, k, dims=(2, 3))
            views.append((k, flip, self._forward(view.contiguous(), head)))
        return [self._merge_views([(k, f, o.item(i)) for k, f, o in views], (ny, nx)) for i in range(len(images))]

    def _check_head(self, head: str):
        if head not in self.net.heads:
            raise UserFacingError(f"model {self.meta.get('path')} has no head {head!r}; "
                                  f"its heads are: {', '.join(self.net.head_names)}")

    def policy(self, diameter_A: float, head: str = "generic", threshold="model", **kw):
        """:meth:`hydrapicker.postprocess.PickPolicy.for_model` for this model (``threshold="model"``:
        the head's calibrated threshold; None: every pick above the floor)."""
        from .postprocess import PickPolicy

        return PickPolicy.for_model(self.meta, diameter_A, head, threshold, **kw)

    def _finish(self, prepared, outputs, policy, invalid=None, info=None):
        """``outputs`` (:class:`NetOutputs`) -> (picks, ranked): the candidates of both grids decoded and
        ranked (:func:`~hydrapicker.postprocess.rank`), re-centred by the refiner when one is loaded, and
        selected (:func:`~hydrapicker.postprocess.select`), then re-centred on class averages when the
        policy asks (``class_centres_at``); ``info`` (a dict) receives the micrograph's ``threshold`` and
        ``threshold_info`` (and ``class_centres``)."""
        from dataclasses import replace

        from .postprocess import decode, rank, rounded, select, weigh_by_evidence

        grid, cmap, half_cell = outputs
        candidates = decode(grid, self.stride, policy.decode_floor, float(self.meta.get("temperature", defaults.TEMPERATURE)),
                            prepared.scale_xy, prepared.shape, prepared.pixel_size, half_cell=half_cell,
                            origin=prepared.origin, region=prepared.region)
        ranked = rank(candidates, policy, invalid)
        if cmap is not None:
            ranked = refined(self.refiner, cmap, prepared, ranked, policy, invalid)
        ranked = weigh_by_evidence(ranked, policy, info)
        if policy.class_centres_at is None:
            return select(ranked, policy, info), ranked
        picks = select(ranked, replace(policy, round_to_pixel=False), info)
        picks = self._class_centred(prepared, picks, ranked.above(policy.class_centres_at), info)
        return rounded(picks, policy), ranked

    def _class_centred(self, prepared, picks: Picks, confident: Picks, info=None) -> Picks:
        """``picks`` re-centred on the class averages of the micrograph's ``confident`` picks, or on the
        data set's (``class_refs``: :meth:`with_class_references`) when this picker holds some
        (:mod:`hydrapicker.class_centres`); ``info`` (a dict) receives ``class_centres`` (what was done)."""
        from .class_centres import recentred_picks

        x0, y0 = prepared.origin
        moved, done = recentred_picks(shifted(picks, -x0, -y0), prepared.image, prepared.scale_xy, self.extent_px,
                                      shifted(confident, -x0, -y0), refs=self.class_refs)
        moved = shifted(moved, x0, y0)
        if info is not None:
            info["class_centres"] = {"moved": done.moved, "confident": done.confident, "classes": done.classes,
                                     **done.report}
        return moved

    def class_references(self, mics: list, diameter_A: float, head: str, policy):
        """Class averages of several micrographs' confident picks (FOM >= ``policy.class_centres_at``), one
        reference for a whole data set as 2D classification builds it
        (:func:`hydrapicker.class_centres.references`): -> (ClassReferences or None when too few, names of
        the micrographs that could not be read). :meth:`with_class_references` centres every micrograph's
        picks on it."""
        from dataclasses import replace

        from .class_centres import DEFAULT_SETTINGS, alignment_inputs, references

        self._check_head(head)
        plain = replace(policy, class_centres_at=None)
        images, xys, failed = [], [], []
        for mic in mics:
            try:
                loaded, _, regions = self._read(mic, diameter_A, policy.find_invalid)
            except (MicrographError, UserFacingError, OSError, ValueError):
                failed.append(mic.name)
                continue
            prepared = self._prepared(loaded, mic, diameter_A)
            _, ranked = self._finish(prepared, self._outputs(prepared.image, head), plain, regions)
            confident = ranked.above(policy.class_centres_at)
            image, xy = alignment_inputs(prepared.image, prepared.scale_xy, self.extent_px,
                                         shifted(confident, -prepared.origin[0], -prepared.origin[1]))
            images.append(image)
            xys.append(xy)
        return references(images, xys, DEFAULT_SETTINGS.px_per_d, data_set=True), failed

    def with_class_references(self, refs) -> "Picker":
        """This picker (the same network, refiner and settings) centring every micrograph's picks on the
        class averages ``refs`` (:meth:`class_references`; None: each micrograph's own) whenever its policy
        asks for class centring."""
        import copy

        other = copy.copy(self)
        other.class_refs = refs
        return other

    def pick_one(self, mic: Micrograph, diameter_A: float, head: str = "generic", policy=None) -> Picks:
        """Pick one micrograph (errors raise); ``policy`` None: every pick above the model's floor."""
        self._check_head(head)
        self._say_refinement(head)
        if isinstance(mic, str):
            mic = Micrograph(mic)
        policy = policy or self.policy(diameter_A, head, threshold=None)
        loaded, _, regions = self._read(mic, diameter_A, policy.find_invalid)
        prepared = self._prepared(loaded, mic, diameter_A)
        return self._finish(prepared, self._outputs(prepared.image, head), policy, regions)[0]

    # -- many micrographs -----------------------------------------------------------------------
    def pick(self, micrographs: Iterable[Micrograph], diameter_A: float, head: str = "generic",
             policy=None, should_stop: Optional[Callable[[], bool]] = None) -> Iterator[PickResult]:
        """Pick micrographs in order, reading ahead in background threads.

        ``policy``: a :class:`~hydrapicker.postprocess.PickPolicy` (see :meth:`policy`); None keeps every
        pick above the model's floor. Each result's ``picks`` are the final picks, its ``candidates``
        every pick above the floor (for FOM histograms and files thresholded later).
        """
        self._check_head(head)
        self._say_refinement(head)
        if diameter_A is None or not diameter_A > 0:
            raise UserFacingError(f"particle diameter must be a positive number of Angstrom, got {diameter_A}")
        policy = policy or self.policy(diameter_A, head, threshold=None)
        mics = list(micrographs)
        if not mics:
            return
        errors = (MicrographError, UserFacingError, OSError, ValueError)
        with ThreadPoolExecutor(max_workers=self.readers, thread_name_prefix="hydra-reader") as pool:
            pending = deque()
            upcoming = iter(mics)

            def read_ahead():
                mic = next(upcoming, None)
                if mic is not None:
                    pending.append((mic, pool.submit(self._read, mic, diameter_A, policy.find_invalid)))

            for _ in range(self.readers + self.batch - 1):
                read_ahead()
            group = []  # (micrograph, prepared, seconds reading, regions) waiting to share a forward pass

            def flush():
                if not group:
                    return
                t0 = time.perf_counter()
                outputs = self._infer_many([p.image for _, p, _, _ in group], head)
                dt = (time.perf_counter() - t0) / len(group)
                done = list(group)
                group.clear()
                for (mic, prepared, t_read, regions), out in zip(done, outputs):
                    info = {"seconds_read": t_read, "seconds_infer": dt, "batch": len(done),
                            "scale": prepared.scale_xy, "shape": prepared.shape,
                            "pixel_size": prepared.pixel_size, "device": str(self.device),
                            "pixel_size_source": self._apix_source.get(mic.path),
                            "invalid": None if regions is None else regions.summary()}
                    if info["invalid"] and info["invalid"]["excluded_fraction"] > 0:  # for the run logs
                        info["invalid_text"] = regions.describe()
                    picks, ranked = self._finish(prepared, out, policy, regions, info=info)
                    yield PickResult(mic, picks, None, candidates=ranked, info=info)

            while pending:
                if should_stop is not None and should_stop():
                    for _, future in pending:
                        future.cancel()
                    return
                mic, future = pending.popleft()
                read_ahead()
                try:
                    loaded, t_read, regions = future.result()
                    prepared = self._prepared(loaded, mic, diameter_A)
                except errors as exc:
                    if isinstance(exc, PixelSizeError):  # every micrograph would be at a wrong scale: stop
                        for _, f in pending:
                            f.cancel()
                        raise
                    yield from flush()  # results stay in the order of the micrographs
                    yield PickResult(mic, None, exc, {})
                    continue
                if group and (len(group) >= self.batch or not self._batchable(prepared.image)
                              or prepared.image.shape != group[0][1].image.shape):
                    yield from flush()
                group.append((mic, prepared, t_read, regions))
                if not self._batchable(prepared.image):
                    yield from flush()
            yield from flush()
