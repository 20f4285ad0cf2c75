"""The tiny-world ablation scripts: which sweeps and reports they start, with a stand-in
Python that records its command lines instead of training."""

import os
import subprocess
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "experiments" / "tiny_world"
PAIR_PRESETS = "experiment=tiny_dpo,tiny_sft,tiny_rpo,tiny_ncp_dpo,tiny_ncp_cpo,tiny_ncp_sft"


def _calls(script: str, tmp_path: Path, args: list[str], **env: str) -> list[str]:
    log = tmp_path / "calls.log"
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    fake.chmod(0o755)
    environ = {**os.environ, "PYTHON": str(fake), **env}
    subprocess.run(["bash", str(SCRIPTS / script), *args], check=True, env=environ)
    return log.read_text().splitlines()


def test_the_ablation_sweeps_methods_then_each_style_into_its_own_report(tmp_path):
    out = tmp_path / "ab"
    calls = _calls("ablation.sh", tmp_path, [str(out)], PRESETS="tiny_dpo", STYLES="winter,sketch")
    assert calls[0].split()[:4] == ["-m", "alignkit", "-m", "experiment=tiny_dpo"]
    assert {"seed=0,1,2", "eval.seeds_per_prompt=32", f"hydra.sweep.dir={out}"} < set(
        calls[0].split()
    )
    assert calls[1] == f"-m alignkit.report {out}"
    for sweep, style in zip(calls[2::2], ("winter", "sketch")):
        words = sweep.split()
        assert PAIR_PRESETS in words and "seed=0" in words and f"data.style={style}" in words
        assert f"hydra.sweep.dir={out}_style/{style}" in words
    assert calls[3::2] == [
        f"-m alignkit.report {out}_style/winter --primary style_winter",
        f"-m alignkit.report {out}_style/sketch --primary style_sketch",
    ]


def test_an_empty_styles_list_skips_the_style_task(tmp_path):
    calls = _calls("ablation.sh", tmp_path, [str(tmp_path / "ab")], STYLES="", SEEDS="0")
    assert len(calls) == 2 and "seed=0" in calls[0].split()
