"""Contrast transfer function on an ``rfft2`` frequency grid.

Sign convention: the image is ``1 + ifft(CTF * fft(V))`` with V >= 0 the projected potential of the protein,
and ``CTF = -(sqrt(1 - A^2) sin(chi) + A cos(chi))``, ``chi = pi lambda df k^2 - pi/2 Cs lambda^3 k^4 + phase``,
df > 0 underfocus (RELION's convention). At low frequency the CTF is negative: protein is DARK, as in real
micrographs.
"""
from __future__ import annotations

import numpy as np


def electron_wavelength_A(voltage_kV: float) -> float:
    v = voltage_kV * 1e3
    return 12.2643247 / np.sqrt(v * (1 + 0.978466e-6 * v))


def freq_grid(shape, pixel_size: float):
    """(kx, ky) in 1/A for an rfft2 of an image of ``shape`` (ny, nx)."""
    ny, nx = shape
    ky = np.fft.fftfreq(ny, d=pixel_size)[:, None]
    kx = np.fft.rfftfreq(nx, d=pixel_size)[None, :]
    return kx, ky


def ctf_2d(shape, pixel_size, defocus_u_A, defocus_v_A, angle_deg, voltage_kV=300.0, cs_mm=2.7,
           amp_contrast=0.1, phase_shift_deg=0.0, bfactor=0.0, grid=None):
    """The CTF (times a B-factor envelope ``exp(-B k^2 / 4)``) on the rfft2 grid, float32."""
    kx, ky = grid if grid is not None else freq_grid(shape, pixel_size)
    k2 = kx * kx + ky * ky
    lam = electron_wavelength_A(voltage_kV)
    ang = np.arctan2(ky, kx) - np.deg2rad(angle_deg)
    df = 0.5 * (defocus_u_A + defocus_v_A + (defocus_u_A - defocus_v_A) * np.cos(2 * ang))
    cs = cs_mm * 1e7
    chi = np.pi * lam * df * k2 - 0.5 * np.pi * cs * lam ** 3 * k2 * k2 + np.deg2rad(phase_shift_deg)
    a = amp_contrast
    ctf = -(np.sqrt(1 - a * a) * np.sin(chi) + a * np.cos(chi))
    if bfactor:
        ctf = ctf * np.exp(-bfactor * k2 / 4.0)
    return ctf.astype(np.float32)


def gaussian_ft(k2, sigma_A: float):
    """Fourier transform of a unit-mass Gaussian of width ``sigma_A``."""
    return np.exp(-2 * np.pi ** 2 * sigma_A ** 2 * k2)
