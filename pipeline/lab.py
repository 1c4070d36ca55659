"""Perceptual colour: sRGB ↔ linear light, CIELAB (D65) and the CIEDE2000 colour difference.

A step that promises a perceptual bound on what it changes (``tone_match``: no subject pixel moves more than
``max_delta_e``) measures it here, on the values it writes. Arrays are floats, sRGB-encoded values in 0..1, any
shape × 3.
"""
from __future__ import annotations

import numpy as np

# IEC 61966-2-1 sRGB primaries to CIE XYZ, D65 white (the rows give X, Y, Z)
RGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]])
D65 = RGB_TO_XYZ.sum(axis=1)  # the white point: XYZ of linear (1, 1, 1): (0.95047, 1.0, 1.08883)
LUMA = RGB_TO_XYZ[1]  # relative luminance Y of linear sRGB


def srgb_decode(encoded: np.ndarray) -> np.ndarray:
    """sRGB-encoded (0..1) → linear light (0..1)."""
    v = np.asarray(encoded, dtype=np.float64)
    return np.where(v <= 0.04045, v / 12.92, np.power((np.maximum(v, 0.04045) + 0.055) / 1.055, 2.4))


def srgb_encode(linear: np.ndarray) -> np.ndarray:
    """Linear light (0..1) → sRGB-encoded (0..1)."""
    v = np.asarray(linear, dtype=np.float64)
    return np.where(v <= 0.0031308, v * 12.92, 1.055 * np.power(np.maximum(v, 0.0031308), 1 / 2.4) - 0.055)


def srgb_to_lab(encoded: np.ndarray) -> np.ndarray:
    """sRGB-encoded (0..1) → CIELAB (L* 0..100), D65."""
    t = (srgb_decode(encoded) @ RGB_TO_XYZ.T) / D65
    d = 6 / 29
    f = np.where(t > d ** 3, np.cbrt(t), t / (3 * d * d) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def delta_e2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 (Sharma, Wu and Dalal 2005) between CIELAB arrays (… × 3), per element."""
    l1, a1, b1 = np.moveaxis(np.asarray(lab1, dtype=np.float64), -1, 0)
    l2, a2, b2 = np.moveaxis(np.asarray(lab2, dtype=np.float64), -1, 0)
    c_mean = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    g = 0.5 * (1 - np.sqrt(c_mean ** 7 / (c_mean ** 7 + 25.0 ** 7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.degrees(np.arctan2(b1, a1p)) % 360
    h2p = np.degrees(np.arctan2(b2, a2p)) % 360
    chroma_zero = c1p * c2p == 0
    dh = h2p - h1p
    dh = np.where(chroma_zero, 0, np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh)))
    d_l, d_c = l2 - l1, c2p - c1p
    d_h = 2 * np.sqrt(c1p * c2p) * np.sin(np.radians(dh / 2))
    l_mean, cp_mean = (l1 + l2) / 2, (c1p + c2p) / 2
    h_sum = h1p + h2p
    h_mean = np.where(chroma_zero, h_sum, np.where(np.abs(h1p - h2p) <= 180, h_sum / 2,
                                                   np.where(h_sum < 360, (h_sum + 360) / 2, (h_sum - 360) / 2)))
    t = (1 - 0.17 * np.cos(np.radians(h_mean - 30)) + 0.24 * np.cos(np.radians(2 * h_mean))
         + 0.32 * np.cos(np.radians(3 * h_mean + 6)) - 0.20 * np.cos(np.radians(4 * h_mean - 63)))
    s_l = 1 + 0.015 * (l_mean - 50) ** 2 / np.sqrt(20 + (l_mean - 50) ** 2)
    s_c = 1 + 0.045 * cp_mean
    s_h = 1 + 0.015 * cp_mean * t
    r_t = -np.sin(np.radians(60 * np.exp(-(((h_mean - 275) / 25) ** 2)))) * 2 * np.sqrt(
        cp_mean ** 7 / (cp_mean ** 7 + 25.0 ** 7))
    return np.sqrt((d_l / s_l) ** 2 + (d_c / s_c) ** 2 + (d_h / s_h) ** 2 + r_t * (d_c / s_c) * (d_h / s_h))


# Oklab (Björn Ottosson, 2020): linear sRGB → cone-like responses → opponent axes. Its hue angle stays the hue
# one sees where CIELAB's bends: a navy and a pale blue of one CIELAB hue angle look purple-shifted apart (the blue
# region of CIELAB), of one Oklab hue they look one blue. ``recolor`` keeps CIELAB's L* and moves a*b*, but aims at
# the swatch's Oklab hue.
_OK_LMS = np.array([[0.4122214708, 0.5363325363, 0.0514459929],
                    [0.2119034982, 0.6806995451, 0.1073969566],
                    [0.0883024619, 0.2817188376, 0.6299787005]])
_OK_LAB = np.array([[0.2104542553, 0.7936177850, -0.0040720468],
                    [1.9779984951, -2.4285922050, 0.4505937099],
                    [0.0259040371, 0.7827717662, -0.8086757660]])


def linear_to_oklab(linear: np.ndarray) -> np.ndarray:
    """Linear sRGB (… × 3) → Oklab (L 0..1, a, b)."""
    return np.cbrt(np.asarray(linear, dtype=np.float64) @ _OK_LMS.T) @ _OK_LAB.T


def oklab_hue(linear: np.ndarray) -> np.ndarray:
    """The Oklab hue angle (degrees, 0..360) of linear sRGB colours (… × 3)."""
    ok = linear_to_oklab(linear)
    return np.degrees(np.arctan2(ok[..., 2], ok[..., 1])) % 360
