"""A tiny 5x7 bitmap font so the harness's PNG figures can carry text without PIL.

Glyphs are the classic 5x7 LCD font for printable ASCII (``' '`` to ``'~'``), stored as
five column bytes each (bit 0 = top row). Characters outside the font render as a
hollow placeholder box so a label never crashes a plot.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

GLYPH_WIDTH, GLYPH_HEIGHT = 5, 7
ADVANCE = GLYPH_WIDTH + 1  # one blank column between glyphs

# Ten hex digits (five column bytes) per character, from ' ' (0x20) to '~' (0x7E).
_COLUMNS = """
0000000000 00005F0000 0007000700 147F147F14 242A7F2A12 2313086462 3649552250 0005030000
001C224100 0041221C00 082A1C2A08 08083E0808 0050300000 0808080808 0060600000 2010080402
3E5149453E 00427F4000 4261514946 2141454B31 1814127F10 2745454539 3C4A494930 0171090503
3649494936 064949291E 0036360000 0056360000 0008142241 1414141414 4122140800 0201510906
324979413E 7E1111117E 7F49494936 3E41414122 7F4141221C 7F49494941 7F09090101 3E41415132
7F0808087F 00417F4100 2040413F01 7F08142241 7F40404040 7F0204027F 7F0408107F 3E4141413E
7F09090906 3E4151215E 7F09192946 4649494931 01017F0101 3F4040403F 1F2040201F 7F2018207F
6314081463 0304780403 6151494543 00007F4141 0204081020 41417F0000 0402010204 4040404040
0001020400 2054545478 7F48444438 3844444420 384444487F 3854545418 087E090102 081454543C
7F08040478 00447D4000 2040443D00 007F102844 00417F4000 7C0418047C 7C08040478 3844444438
7C14141408 081414187C 7C08040408 4854545420 043F444020 3C4040207C 1C2040201C 3C4030403C
4428102844 0C5050503C 4464544C44 0008364100 00007F0000 0041360800 0804081008
"""

FIRST = 0x20
CHARSET = "".join(chr(FIRST + k) for k in range(len(_COLUMNS.split())))


@lru_cache(maxsize=None)
def glyph(char: str) -> np.ndarray:
    """The ``(GLYPH_HEIGHT, GLYPH_WIDTH)`` bool bitmap of ``char`` (a box if unknown)."""
    index = ord(char) - FIRST if len(char) == 1 else -1
    codes = _COLUMNS.split()
    if not 0 <= index < len(codes):
        return _placeholder()
    cols = bytes.fromhex(codes[index])
    bits = [[(c >> row) & 1 for c in cols] for row in range(GLYPH_HEIGHT)]
    out = np.array(bits, dtype=bool)
    out.setflags(write=False)
    return out


def _placeholder() -> np.ndarray:
    box = np.zeros((GLYPH_HEIGHT, GLYPH_WIDTH), dtype=bool)
    box[[0, -1], :] = box[:, [0, -1]] = True
    box.setflags(write=False)
    return box


def text_mask(text: str, scale: int = 1, rotate: bool = False) -> np.ndarray:
    """Bool mask of ``text`` on one line; ``rotate`` turns it 90° to read bottom-to-top."""
    text = str(text)
    if not text:
        return np.zeros((GLYPH_HEIGHT * scale, 0), dtype=bool)
    mask = np.zeros((GLYPH_HEIGHT, ADVANCE * len(text) - 1), dtype=bool)
    for k, char in enumerate(text):
        mask[:, k * ADVANCE:k * ADVANCE + GLYPH_WIDTH] = glyph(char)
    mask = np.kron(mask, np.ones((scale, scale), dtype=bool)) if scale > 1 else mask
    return np.rot90(mask) if rotate else mask


def text_size(text: str, scale: int = 1, rotate: bool = False) -> tuple[int, int]:
    """``(width, height)`` in pixels of ``text`` as :func:`draw_text` would draw it."""
    n = len(str(text))
    width, height = max(ADVANCE * n - 1, 0) * scale, GLYPH_HEIGHT * scale
    return (height, width) if rotate else (width, height)


def draw_text(image: np.ndarray, text: str, x: int, y: int,
              rgb: tuple[int, int, int] = (0, 0, 0), *, scale: int = 1,
              rotate: bool = False) -> None:
    """Paints ``text`` into ``image`` (H, W, 3) with its top-left corner at pixel (x, y).

    Pixels falling outside the image are clipped rather than wrapping or raising.
    """
    mask = text_mask(text, scale, rotate)
    h, w = mask.shape
    top, left = max(y, 0), max(x, 0)
    bottom, right = min(y + h, image.shape[0]), min(x + w, image.shape[1])
    if bottom <= top or right <= left:
        return
    region = mask[top - y:bottom - y, left - x:right - x]
    image[top:bottom, left:right][region] = rgb
