"""Whisper's language codes, and whether a model can do more than English.

Light on purpose: configuration validates against this list without importing faster-whisper.
"""

from __future__ import annotations

import json
from pathlib import Path

# The codes Whisper's tokenizer knows (faster_whisper.tokenizer._LANGUAGE_CODES).
LANGUAGE_CODES = frozenset(
    ('af', 'am', 'ar', 'as', 'az', 'ba', 'be', 'bg', 'bn', 'bo', 'br', 'bs', 'ca', 'cs', 'cy',
    'da', 'de', 'el', 'en', 'es', 'et', 'eu', 'fa', 'fi', 'fo', 'fr', 'gl', 'gu', 'ha', 'haw',
    'he', 'hi', 'hr', 'ht', 'hu', 'hy', 'id', 'is', 'it', 'ja', 'jw', 'ka', 'kk', 'km', 'kn',
    'ko', 'la', 'lb', 'ln', 'lo', 'lt', 'lv', 'mg', 'mi', 'mk', 'ml', 'mn', 'mr', 'ms', 'mt',
    'my', 'ne', 'nl', 'nn', 'no', 'oc', 'pa', 'pl', 'ps', 'pt', 'ro', 'ru', 'sa', 'sd', 'si',
    'sk', 'sl', 'sn', 'so', 'sq', 'sr', 'su', 'sv', 'sw', 'ta', 'te', 'tg', 'th', 'tk', 'tl',
    'tr', 'tt', 'uk', 'ur', 'uz', 'vi', 'yi', 'yo', 'zh', 'yue')
)  # fmt: skip


# Each code's English name, as Whisper's tokenizer and the tools built on it (Bazarr,
# whisper-asr-webservice's ``detected_language``) name them.
LANGUAGE_NAMES: dict[str, str] = {
    "en": "english",
    "zh": "chinese",
    "de": "german",
    "es": "spanish",
    "ru": "russian",
    "ko": "korean",
    "fr": "french",
    "ja": "japanese",
    "pt": "portuguese",
    "tr": "turkish",
    "pl": "polish",
    "ca": "catalan",
    "nl": "dutch",
    "ar": "arabic",
    "sv": "swedish",
    "it": "italian",
    "id": "indonesian",
    "hi": "hindi",
    "fi": "finnish",
    "vi": "vietnamese",
    "he": "hebrew",
    "uk": "ukrainian",
    "el": "greek",
    "ms": "malay",
    "cs": "czech",
    "ro": "romanian",
    "da": "danish",
    "hu": "hungarian",
    "ta": "tamil",
    "no": "norwegian",
    "th": "thai",
    "ur": "urdu",
    "hr": "croatian",
    "bg": "bulgarian",
    "lt": "lithuanian",
    "la": "latin",
    "mi": "maori",
    "ml": "malayalam",
    "cy": "welsh",
    "sk": "slovak",
    "te": "telugu",
    "fa": "persian",
    "lv": "latvian",
    "bn": "bengali",
    "sr": "serbian",
    "az": "azerbaijani",
    "sl": "slovenian",
    "kn": "kannada",
    "et": "estonian",
    "mk": "macedonian",
    "br": "breton",
    "eu": "basque",
    "is": "icelandic",
    "hy": "armenian",
    "ne": "nepali",
    "mn": "mongolian",
    "bs": "bosnian",
    "kk": "kazakh",
    "sq": "albanian",
    "sw": "swahili",
    "gl": "galician",
    "mr": "marathi",
    "pa": "punjabi",
    "si": "sinhala",
    "km": "khmer",
    "sn": "shona",
    "yo": "yoruba",
    "so": "somali",
    "af": "afrikaans",
    "oc": "occitan",
    "ka": "georgian",
    "be": "belarusian",
    "tg": "tajik",
    "sd": "sindhi",
    "gu": "gujarati",
    "am": "amharic",
    "yi": "yiddish",
    "lo": "lao",
    "uz": "uzbek",
    "fo": "faroese",
    "ht": "haitian creole",
    "ps": "pashto",
    "tk": "turkmen",
    "nn": "nynorsk",
    "mt": "maltese",
    "sa": "sanskrit",
    "lb": "luxembourgish",
    "my": "myanmar",
    "bo": "tibetan",
    "tl": "tagalog",
    "mg": "malagasy",
    "as": "assamese",
    "tt": "tatar",
    "haw": "hawaiian",
    "ln": "lingala",
    "ha": "hausa",
    "ba": "bashkir",
    "jw": "javanese",
    "su": "sundanese",
    "yue": "cantonese",
}

MULTILINGUAL_VOCABULARY = 51865  # an English-only Whisper has one token fewer (51864)


def english_only(model: str, folder: Path | None = None) -> bool:
    """Is ``model`` an English-only Whisper? A CTranslate2 folder says so by the size of its
    vocabulary (English-only models lack the language tokens' extra entry); a name by its
    ``.en`` suffix."""
    if folder is not None:
        size = _vocabulary_size(folder)
        if size is not None:
            return size < MULTILINGUAL_VOCABULARY
    name = model.rstrip("/").rsplit("/", 1)[-1].lower()
    return name.endswith((".en", "-en", ".en-ct2"))


def _vocabulary_size(folder: Path) -> int | None:
    try:
        return len(json.loads((folder / "vocabulary.json").read_text()))
    except (OSError, ValueError):
        pass
    try:
        with (folder / "vocabulary.txt").open(encoding="utf-8") as fh:
            return sum(1 for _ in fh)
    except OSError:
        return None


# ISO 639-1 codes and the ISO 639-2 tags containers carry for them (B and T forms).
TAGS = {
    "en": ("eng",), "de": ("deu", "ger"), "fr": ("fra", "fre"), "es": ("spa",),
    "it": ("ita",), "pt": ("por",), "nl": ("nld", "dut"), "ru": ("rus",), "ja": ("jpn",),
    "zh": ("zho", "chi"), "ko": ("kor",), "pl": ("pol",), "sv": ("swe",), "da": ("dan",),
    "no": ("nor", "nob", "nno"), "fi": ("fin",), "tr": ("tur",), "cs": ("ces", "cze"),
    "el": ("ell", "gre"), "hu": ("hun",), "ar": ("ara",), "he": ("heb",), "hi": ("hin",),
    "uk": ("ukr",), "ro": ("ron", "rum"),
}  # fmt: skip


def language_tags(language: str) -> frozenset[str]:
    """Every tag of one language a container or a file name may carry: ``en``, ``eng``
    (``en-US`` and ``EN`` too), or for ``ger``: ``de``, ``deu``, ``ger``."""
    code = language.strip().lower().replace("_", "-").split("-", 1)[0]
    names = {code, *TAGS.get(code, ())}
    names |= {two for two, three in TAGS.items() if code in three}
    names |= {tag for two in list(names) for tag in TAGS.get(two, ())}
    return frozenset(names)
