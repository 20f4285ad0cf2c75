"""``python -m alignkit.export RUN_DIR --format diffusers|kohya|merged``: see the package."""

from __future__ import annotations

import argparse

from alignkit.export import FORMATS, export_run
from alignkit.export.hub import check_repo_id, stage, upload
from alignkit.models import ModelLoadError
from alignkit.user_errors import one_line_errors

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, ModelLoadError)


class _Parser(argparse.ArgumentParser):
    """Usage mistakes become one ``alignkit: error:`` line like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ValueError(f"{message} (see python -m alignkit.export --help)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m alignkit.export", description=__doc__)
    parser.add_argument("run_dir", help="a finished run folder (it holds .hydra/ and final/)")
    parser.add_argument("--format", required=True, help=" | ".join(FORMATS))
    parser.add_argument("--out", help="where to write (default: RUN_DIR/export/<format>)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument(
        "--push-to-hub",
        metavar="REPO_ID",
        help="also upload, with a model card, to this Hub repository (offline: stage it)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    with one_line_errors(*USER_ERRORS):
        args = _parser().parse_args(argv)
        if args.push_to_hub:
            check_repo_id(args.push_to_hub)
        run, written = export_run(args.run_dir, args.format, args.out, args.overwrite)
        print(f"wrote {written} ({args.format})")
        if run.model.init == "random" and args.format == "merged":
            print(
                "note: the base is the tiny random-init architecture, rebuilt from its fixed "
                "seed; it matches the run's base under the same torch and diffusers versions"
            )
        if args.push_to_hub:
            folder = run.path / "export" / "hub"
            stage(run, args.format, args.push_to_hub, written, folder)
            print(upload(folder, args.push_to_hub))


if __name__ == "__main__":
    main()
