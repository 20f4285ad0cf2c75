"""The tiny world's prompt grammar: ``a <colour> <shape> on a <background> background``.

Every word names something the renderer draws and the judge can check, so a prompt is a
complete specification of what a faithful image shows. The vocabulary is small on purpose:
4 shapes x 6 colours x 4 backgrounds = 96 prompts.

The held-out split keeps the triples whose vocabulary indices sum to a multiple of 5
(19 prompts, about 20%). Every shape and colour appears in it, and every (shape, colour) pair
keeps at least three of its four backgrounds in training, so held-out prompts test new
combinations of words the model has seen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")

#: Saturated colours, near the corners of the RGB cube so that their directions from every
#: background are at least ~35 degrees apart (the judge compares directions).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 190, 40),
    "blue": (30, 40, 230),
    "yellow": (235, 220, 30),
    "magenta": (215, 40, 215),
    "cyan": (30, 210, 220),
}

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 15),
    "white": (240, 240, 240),
    "grey": (128, 128, 128),
    "dark blue": (20, 30, 90),
}

_TEMPLATE = re.compile(r"an? (?P<colour>\S+) (?P<shape>\S+) on an? (?P<background>.+) background")
HELD_OUT_MODULUS = 5


@dataclass(frozen=True)
class PromptSpec:
    """What one prompt asks for; the words are validated against the vocabulary."""

    shape: str
    colour: str
    background: str

    def __post_init__(self) -> None:
        _check_word("shape", self.shape, SHAPES)
        _check_word("colour", self.colour, tuple(COLOURS))
        _check_word("background", self.background, tuple(BACKGROUNDS))

    @property
    def text(self) -> str:
        return f"a {self.colour} {self.shape} on a {self.background} background"

    @property
    def colour_rgb(self) -> tuple[int, int, int]:
        return COLOURS[self.colour]

    @property
    def background_rgb(self) -> tuple[int, int, int]:
        return BACKGROUNDS[self.background]


def _check_word(kind: str, word: str, valid: tuple[str, ...]) -> None:
    if word not in valid:
        raise ValueError(f"unknown {kind} {word!r}; valid {kind}s: {', '.join(valid)}")


def parse_prompt(text: str) -> PromptSpec:
    """Prompt text -> PromptSpec; case and repeated spaces are ignored."""
    normalised = " ".join(text.lower().split())
    match = _TEMPLATE.fullmatch(normalised)
    if match is None:
        raise ValueError(
            f"prompt {text!r} does not follow 'a <colour> <shape> on a <background> background'"
        )
    return PromptSpec(match["shape"], match["colour"], match["background"])


def as_spec(prompt: str | PromptSpec) -> PromptSpec:
    """Accept either form wherever a prompt is expected."""
    return prompt if isinstance(prompt, PromptSpec) else parse_prompt(prompt)


def all_specs() -> list[PromptSpec]:
    """Every prompt of the grammar, in vocabulary order (shape, then colour, then background)."""
    return [
        PromptSpec(shape, colour, background)
        for shape in SHAPES
        for colour in COLOURS
        for background in BACKGROUNDS
    ]


def is_held_out(spec: PromptSpec) -> bool:
    """The deterministic split rule (see the module docstring)."""
    index_sum = (
        SHAPES.index(spec.shape)
        + list(COLOURS).index(spec.colour)
        + list(BACKGROUNDS).index(spec.background)
    )
    return index_sum % HELD_OUT_MODULUS == 0


def all_prompts() -> list[str]:
    return [spec.text for spec in all_specs()]


def train_prompts() -> list[str]:
    return [spec.text for spec in all_specs() if not is_held_out(spec)]


def heldout_prompts() -> list[str]:
    return [spec.text for spec in all_specs() if is_held_out(spec)]
