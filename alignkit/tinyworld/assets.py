"""Where the tiny world's shipped artifacts live (``alignkit/tinyworld/assets/<name>``).

Only tiny-world configs (``model=tiny*``) and tiny-world scripts name these paths; real models
never fall back to them.
"""

from __future__ import annotations

from importlib.resources import files


def asset_path(name: str) -> str:
    """The folder of a shipped tiny-world artifact: base_model, pairs, clip, pickscore, spm, ..."""
    return str(files("alignkit.tinyworld") / "assets" / name)
