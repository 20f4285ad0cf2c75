"""A small, varied prompt set for watching a real model (SD1.5, SDXL) while it trains.

Our choice, written for alignkit: twelve prompts that span what preference data rewards and
what base models get wrong (people and hands, animals, text, counting, spatial relations,
styles, scenes), so a sample grid shows a drift early. Named ``general`` in ``eval.prompts``.
"""

from __future__ import annotations

GENERAL_PROMPTS = (
    "a portrait photo of an old fisherman with a grey beard, soft window light",
    "a golden retriever puppy sitting in fresh snow",
    "a red cube on top of a blue sphere on a wooden table",
    "three green apples and one orange in a white bowl",
    "a street sign that says OPEN in bold letters",
    "a watercolor painting of a lighthouse on a cliff at sunset",
    "a close-up photo of two hands holding a cup of coffee",
    "an astronaut riding a horse on the moon, digital art",
    "a cozy reading nook with a window, a plant and a stack of books",
    "a futuristic city skyline at night with neon reflections on wet streets",
    "a bowl of ramen with an egg and spring onions, food photography",
    "a pencil sketch of a hummingbird drinking from a flower",
)
