"""The bundled tiny.en is the published one: each file's sha256 is checked at load (as the
multilingual extra's base is), and a check of unchanged files is remembered."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from insightron_watchd.engine.model_store import ModelNotFound, check_bundled, resolve_model


def test_the_bundled_model_passes_and_a_tampered_copy_is_refused(
    isolated_env: Path, tmp_path: Path
) -> None:
    real = Path(resolve_model("tiny.en"))  # the installed files pass (and the check is kept)
    check_bundled(real)
    copy = tmp_path / "model"
    shutil.copytree(real, copy)
    check_bundled(copy)
    with (copy / "config.json").open("r+b") as fh:  # one byte changed, same size
        first = fh.read(1)
        fh.seek(0)
        fh.write(b" " if first != b" " else b"\n")
    with pytest.raises(ModelNotFound, match=r"config\.json is not the published one"):
        check_bundled(copy)  # the remembered check does not cover a changed file
    (copy / "vocabulary.txt").unlink()
    with pytest.raises(ModelNotFound, match="missing"):
        check_bundled(copy)
