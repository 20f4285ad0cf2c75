"""Export a run's result for other tools: diffusers, kohya (webui/Forge/ComfyUI), a merged
pipeline, and optionally the Hugging Face Hub.

    python -m alignkit.export RUN_DIR --format diffusers|kohya|merged [--out PATH]
                              [--overwrite] [--push-to-hub REPO_ID]
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from alignkit.export.adapter import export_diffusers
from alignkit.export.kohya import export_kohya
from alignkit.export.merged import export_merged
from alignkit.export.run_folder import RunFolder, open_run

#: format -> (its default output under RUN_DIR/export, its writer)
FORMATS: dict[str, tuple[str, Callable[[RunFolder, Path], Path]]] = {
    "diffusers": ("diffusers", export_diffusers),
    "kohya": ("kohya_lora.safetensors", export_kohya),
    "merged": ("merged", export_merged),
}

__all__ = ["FORMATS", "export_run", "open_run"]


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown --format {fmt!r}; choose one of {', '.join(FORMATS)}")


def prepare_output(run: RunFolder, out: Path, overwrite: bool) -> None:
    """Refuse to replace an existing output unless asked, and never the run itself."""
    if not out.exists():
        return
    if not overwrite:
        raise FileExistsError(f"{out} exists: pass --overwrite to replace it, or another --out")
    resolved = out.resolve()
    if resolved == run.path.resolve() or resolved in run.path.resolve().parents:
        raise ValueError(f"--out {out} holds the run folder itself; pick another --out")
    if out.is_dir():
        shutil.rmtree(out)
    else:
        out.unlink()


def export_run(
    run_dir: str | Path, fmt: str, out: str | Path | None = None, overwrite: bool = False
) -> tuple[RunFolder, Path]:
    """Write the run's result in ``fmt`` to ``out`` (default ``RUN_DIR/export/...``)."""
    check_format(fmt)
    run = open_run(run_dir)
    default_name, writer = FORMATS[fmt]
    out = Path(out).expanduser() if out is not None else run.path / "export" / default_name
    prepare_output(run, out, overwrite)
    return run, writer(run, out)
