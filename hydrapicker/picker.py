"""The :class:`Picker`: a model on a device that picks lists of micrographs.

It owns reading (in a background thread, one micrograph ahead), rescaling, normalisation, tiled
inference with bounded memory, decoding, duplicate suppression and edge exclusion. One bad micrograph is
reported in its :class:`PickResult` and skipped; the others are picked.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, Optional

import numpy as np

from .errors import MicrographError, UserFacingError
from .types import Micrograph, PickResult, Picks

# (quarter turns, flip left-right first) in the order test-time augmentation uses them
DIHEDRAL = ((0, False), (2, False), (1, True), (3, True), (1, False), (3, False), (0, True), (2, True))


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


class Picker:
    """Holds a HydraPicker model on a device.

    >>> picker = Picker()                       # shipped generic model, best device
    >>> for res in picker.pick(mics, diameter_A=150):
    ...     print(res.micrograph.name, len(res.picks))
    """

    def __init__(self, model=None, device: str = "auto", threads: Optional[int] = None,
                 log: Callable = print, tile: Optional[int] = None, tta: int = 1):
        import torch

        from .checkpoint import load_checkpoint

        if threads:
            torch.set_num_threads(int(threads))
        self.log = log or (lambda *a, **k: None)
        self.device = select_device(device)
        self.net, self.meta = load_checkpoint(model)
        self.net.to(self.device).eval()
        if self.device.type == "cpu":
            self.net.to(memory_format=torch.channels_last)
        else:  # micrographs of one dataset share a shape: let cuDNN pick its fastest kernels once
            torch.backends.cudnn.benchmark = True
        self.stride = int(self.meta["stride"])
        self.extent_px = float(self.meta["extent_px"])
        if tta not in (1, 2, 4, 8):
            raise UserFacingError(f"--tta {tta}: use 1 (off), 2, 4 or 8 orientations")
        self.tta = int(tta)
        self.tile = tile or (1024 if self.meta.get("preset") != "thesis" else 512)
        self.margin = 64 if self.meta.get("preset") != "thesis" else 96
        self.log(f"[hydra] model {self.meta.get('path')} (preset {self.meta.get('preset')}, "
                 f"heads {', '.join(self.meta['heads'])}) on device {self.device}")

    @property
    def default_head(self) -> str:
        """The model's own choice: the newest few-shot head of a fine-tuned model, else ``generic``."""
        from .checkpoint import default_head

        return default_head(self.meta)

    @property
    def default_threshold(self) -> float:
        """The calibrated threshold of :attr:`default_head`."""
        return self.threshold_for(self.default_head)

    def threshold_for(self, head: str = "generic") -> float:
        """The calibrated threshold of ``head`` (few-shot heads carry their own)."""
        from .checkpoint import threshold_for

        return threshold_for(self.meta, head)

    # -- one micrograph -------------------------------------------------------------------------
    def _load(self, mic: Micrograph, diameter_A: float):
        from .preprocess import prepare, read_mrc, resolve_pixel_size

        t0 = time.perf_counter()
        data, header_apix = read_mrc(mic.path)
        apix = resolve_pixel_size(mic.path, mic.pixel_size, header_apix)
        image = np.asarray(data, dtype=np.float32)
        prepared = prepare(image, apix, diameter_A, self.extent_px, path=mic.path)
        return prepared, time.perf_counter() - t0

    def _grid(self, image: np.ndarray, head: str) -> np.ndarray:
        """Raw outputs for ``image``: plain, or averaged over :attr:`tta` dihedral orientations."""
        if self.tta == 1:
            return self._infer(image, head)
        from .postprocess import merge_orientations

        s = self.stride
        ny, nx = image.shape
        padded = np.pad(image, ((0, (-ny) % s), (0, (-nx) % s)))  # whole cells: orientations share a grid
        grids = []
        for k, flip in DIHEDRAL[:self.tta]:
            view = np.rot90(np.fliplr(padded) if flip else padded, k)
            grids.append((k, flip, self._infer(np.ascontiguousarray(view), head)))
        return merge_orientations(grids)

    def _infer(self, image: np.ndarray, head: str) -> np.ndarray:
        """Rescaled, normalised image -> (3, H/stride, W/stride) raw outputs, tiled when large."""
        import torch

        s = self.stride
        ny, nx = image.shape
        gh, gw = -(-ny // s), -(-nx // s)
        out = np.zeros((3, gh, gw), np.float32)
        from .preprocess import tiles

        with torch.inference_mode():
            for y0, y1, x0, x1, cy0, cy1, cx0, cx1 in tiles((ny, nx), self.tile, self.margin, s):
                # windows are aligned to the stride so that grid cells line up with the full image
                y0, x0 = (y0 // s) * s, (x0 // s) * s
                win = image[y0:y1, x0:x1]
                ph, pw = (-win.shape[0]) % s, (-win.shape[1]) % s
                if ph or pw:
                    win = np.pad(win, ((0, ph), (0, pw)))
                t = torch.from_numpy(np.ascontiguousarray(win))[None, None]
                if self.device.type == "cuda":  # page-locked copy, uploaded without blocking the host; bf16
                    t = t.pin_memory().to(self.device, non_blocking=True)
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        g = self.net(t, head)
                else:
                    g = self.net(t.contiguous(memory_format=torch.channels_last), head)
                g = g[0].float().cpu().numpy()
                gy0, gy1, gx0, gx1 = cy0 // s, -(-cy1 // s), cx0 // s, -(-cx1 // s)
                out[:, gy0:gy1, gx0:gx1] = g[:, gy0 - y0 // s: gy1 - y0 // s, gx0 - x0 // s: gx1 - x0 // s]
        return out

    def _check_head(self, head: str):
        if head not in self.net.heads:
            raise UserFacingError(f"model {self.meta.get('path')} has no head {head!r}; "
                                  f"its heads are: {', '.join(self.net.head_names)}")

    def _finish(self, prepared, grid, diameter_A, floor, min_distance_A, edge_A) -> Picks:
        from .postprocess import decode_grid, to_picks

        floor = float(self.meta.get("floor", 0.05)) if floor is None else float(floor)
        xy, score = decode_grid(grid, self.stride, float(self.meta.get("temperature", 1.0)), floor)
        apix = prepared.pixel_size
        min_d = (0.5 * diameter_A if min_distance_A is None else float(min_distance_A)) / apix
        return to_picks(xy, score, prepared.scale_xy, prepared.shape, min_d, float(edge_A or 0) / apix)

    def pick_one(self, mic: Micrograph, diameter_A: float, head: str = "generic", floor=None,
                 min_distance_A=None, edge_A=0.0) -> Picks:
        self._check_head(head)
        if isinstance(mic, str):
            mic = Micrograph(mic)
        prepared, _ = self._load(mic, diameter_A)
        return self._finish(prepared, self._grid(prepared.image, head), diameter_A, floor,
                            min_distance_A, edge_A)

    def pick_array(self, image: np.ndarray, pixel_size: float, diameter_A: float, head="generic",
                   floor=None, min_distance_A=None, edge_A=0.0) -> Picks:
        """Pick an in-memory micrograph (e.g. downloaded through an API)."""
        from .preprocess import prepare

        self._check_head(head)
        prepared = prepare(np.asarray(image, np.float32), pixel_size, diameter_A, self.extent_px)
        return self._finish(prepared, self._grid(prepared.image, head), diameter_A, floor,
                            min_distance_A, edge_A)

    # -- many micrographs -----------------------------------------------------------------------
    def pick(self, micrographs: Iterable[Micrograph], diameter_A: float, head: str = "generic",
             floor=None, min_distance_A=None, edge_A: float = 0.0,
             should_stop: Optional[Callable[[], bool]] = None) -> Iterator[PickResult]:
        """Pick micrographs in order, reading the next one in a background thread."""
        self._check_head(head)
        if diameter_A is None or not diameter_A > 0:
            raise UserFacingError(f"particle diameter must be a positive number of Angstrom, got {diameter_A}")
        mics = list(micrographs)
        if not mics:
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hydra-reader") as pool:
            future = pool.submit(self._load, mics[0], diameter_A)
            for k, mic in enumerate(mics):
                if should_stop is not None and should_stop():
                    future.cancel()
                    return
                try:
                    prepared, t_read = future.result()
                    error = None
                except (MicrographError, UserFacingError, OSError, ValueError) as exc:
                    prepared, error = None, exc
                if k + 1 < len(mics):
                    future = pool.submit(self._load, mics[k + 1], diameter_A)
                if error is not None:
                    yield PickResult(mic, None, error, {})
                    continue
                t0 = time.perf_counter()
                grid = self._grid(prepared.image, head)
                picks = self._finish(prepared, grid, diameter_A, floor, min_distance_A, edge_A)
                yield PickResult(mic, picks, None, {
                    "seconds_read": t_read, "seconds_infer": time.perf_counter() - t0,
                    "scale": prepared.scale_xy, "shape": prepared.shape, "pixel_size": prepared.pixel_size,
                    "device": str(self.device)})
