"""Names and colours for procedural cities: station labels, line names, the colour palette."""

from __future__ import annotations

import numpy as np

# (name, RGB): distinct, saturated colours that read well on white; the first six are the
# palette of the tiny world.
PALETTE: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("Red", (220, 30, 40)),
    ("Blue", (30, 80, 220)),
    ("Green", (20, 160, 60)),
    ("Orange", (245, 140, 0)),
    ("Purple", (140, 50, 170)),
    ("Cyan", (0, 175, 200)),
    ("Brown", (140, 85, 40)),
    ("Pink", (235, 100, 170)),
    ("Olive", (130, 140, 20)),
    ("Navy", (20, 30, 110)),
    ("Grey", (120, 120, 120)),
    ("Teal", (0, 120, 110)),
)

_FIRST = (
    "Al",
    "Bel",
    "Cor",
    "Dun",
    "El",
    "Fair",
    "Glen",
    "Har",
    "Ives",
    "Kel",
    "Lin",
    "Mar",
    "Nor",
    "Oak",
    "Pem",
    "Quin",
    "Ros",
    "Sal",
    "Tam",
    "Ux",
    "Val",
    "Wes",
    "Yar",
    "Zel",
)
_MIDDLE = ("", "a", "e", "en", "in", "o", "er", "ing")
_LAST = (
    "ton",
    "field",
    "more",
    "bury",
    "wick",
    "dale",
    "ford",
    "stead",
    "by",
    "mouth",
    "worth",
    "gate",
    "port",
    "ham",
    "ley",
    "bridge",
)
_SECOND = (
    "Park",
    "Square",
    "Road",
    "Gardens",
    "Central",
    "Market",
    "Hill",
    "Street",
    "Airport",
    "University",
    "Harbour",
    "Stadium",
    "North",
    "South",
    "East",
    "West",
    "Junction",
    "Museum",
)


def letter_names(rng: np.random.Generator, alphabet: str, n: int) -> list[str]:
    """`n` distinct one-letter labels drawn from `alphabet`."""
    if n > len(alphabet):
        raise ValueError(f"{n} stations but the alphabet {alphabet!r} has only {len(alphabet)}")
    picks = rng.permutation(len(alphabet))[:n]
    return [alphabet[i] for i in picks]


def place_names(rng: np.random.Generator, n: int, second_word_prob: float) -> list[str]:
    """`n` distinct invented place names ("Kelenwick", "Marford Gardens", ...)."""
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        name = (
            _FIRST[int(rng.integers(len(_FIRST)))]
            + _MIDDLE[int(rng.integers(len(_MIDDLE)))]
            + _LAST[int(rng.integers(len(_LAST)))]
        )
        if rng.random() < second_word_prob:
            name += " " + _SECOND[int(rng.integers(len(_SECOND)))]
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def line_styles(
    rng: np.random.Generator, n: int, naming: str, palette_size: int = len(PALETTE)
) -> list[tuple[str, tuple[int, int, int]]]:
    """(line name, RGB) for `n` lines in distinct colours from the first `palette_size`.

    `naming`: "color" -> "Red Line"; "number" -> "Line 1", "Line 2", ...
    """
    palette_size = min(palette_size, len(PALETTE))
    if n > palette_size:
        raise ValueError(f"{n} lines but the palette has only {palette_size} colours")
    picks = rng.permutation(palette_size)[:n]
    out = []
    for k, i in enumerate(picks):
        colour, rgb = PALETTE[int(i)]
        if naming == "color":
            out.append((f"{colour} Line", rgb))
        elif naming == "number":
            out.append((f"Line {k + 1}", rgb))
        else:
            raise ValueError(f"unknown line naming {naming!r}; expected 'color' or 'number'")
    return out
