"""Deterministic multilingual text for the demo tokenizer, the tests and the benchmarks."""

from __future__ import annotations

import random

WORDS: dict[str, tuple[str, ...]] = {
    "en": (
        "the",
        "river",
        "library",
        "answer",
        "question",
        "city",
        "energy",
        "water",
        "history",
        "model",
        "search",
        "document",
        "light",
        "mountain",
        "market",
        "science",
        "people",
        "language",
    ),
    "de": (
        "der",
        "Fluss",
        "Bibliothek",
        "Antwort",
        "Frage",
        "Stadt",
        "Energie",
        "Wasser",
        "Geschichte",
        "Wissenschaft",
        "Menschen",
        "Sprache",
        "über",
        "größer",
        "schön",
    ),
    "fr": (
        "le",
        "fleuve",
        "bibliothèque",
        "réponse",
        "question",
        "ville",
        "énergie",
        "eau",
        "histoire",
        "science",
        "peuple",
        "langue",
        "déjà",
        "très",
        "où",
    ),
    "es": (
        "el",
        "río",
        "biblioteca",
        "respuesta",
        "pregunta",
        "ciudad",
        "energía",
        "agua",
        "historia",
        "ciencia",
        "gente",
        "idioma",
        "más",
        "año",
        "niño",
    ),
    "ru": (
        "река",
        "библиотека",
        "ответ",
        "вопрос",
        "город",
        "энергия",
        "вода",
        "история",
        "наука",
        "люди",
        "язык",
        "большой",
    ),
    "zh": ("河流", "图书馆", "答案", "问题", "城市", "能源", "水", "历史", "科学", "人民", "语言", "大"),
    "ar": ("النهر", "المكتبة", "الجواب", "السؤال", "المدينة", "الطاقة", "الماء", "التاريخ", "العلم", "الناس", "اللغة"),
    "hi": ("नदी", "पुस्तकालय", "उत्तर", "प्रश्न", "शहर", "ऊर्जा", "पानी", "इतिहास", "विज्ञान", "लोग", "भाषा"),
    "sw": ("mto", "maktaba", "jibu", "swali", "mji", "nishati", "maji", "historia", "sayansi", "watu", "lugha"),
    "yo": ("odò", "ilé-ìkàwé", "ìdáhùn", "ìbéèrè", "ìlú", "agbára", "omi", "ìtàn", "sáyẹ́ǹsì", "ènìyàn", "èdè"),
    "am": ("ወንዝ", "ቤተ-መጻሕፍት", "መልስ", "ጥያቄ", "ከተማ", "ኃይል", "ውሃ", "ታሪክ", "ሳይንስ", "ሰዎች", "ቋንቋ"),
    "ha": ("kogi", "ɗakin", "amsa", "tambaya", "birni", "makamashi", "ruwa", "tarihi", "kimiyya", "mutane", "harshe"),
    "ig": ("osimiri", "ọbá", "azịza", "ajụjụ", "obodo", "ike", "mmiri", "akụkọ", "sayensị", "ndị", "asụsụ"),
}

LANGUAGES: tuple[str, ...] = tuple(WORDS)


def sentence(rng: random.Random, language: str, num_words: int) -> str:
    """A sentence of `num_words` words of one language, with a number now and then."""
    words = [rng.choice(WORDS[language]) for _ in range(num_words)]
    if rng.random() < 0.3:
        words.insert(rng.randrange(len(words) + 1), str(rng.randrange(1, 3000)))
    return " ".join(words) + "."


def text(rng: random.Random, num_words: int, language: str | None = None) -> str:
    """Roughly `num_words` words, in one language or (None) mixing languages sentence by sentence."""
    parts: list[str] = []
    remaining = num_words
    while remaining > 0:
        size = min(remaining, rng.randint(4, 14))
        parts.append(sentence(rng, language or rng.choice(LANGUAGES), size))
        remaining -= size
    return " ".join(parts)


def training_corpus(seed: int = 0, num_lines: int = 4000) -> list[str]:
    """Lines in every language for training the demo tokenizer."""
    rng = random.Random(seed)
    return [text(rng, rng.randint(5, 40), LANGUAGES[i % len(LANGUAGES)]) for i in range(num_lines)]


def rag_documents(rng: random.Random, count: int) -> list[str]:
    """`count` retrieved passages as a RAG pipeline sends them: 20 to 400 words each, mixed languages."""
    return [text(rng, rng.choice([20, 60, 150, 400]), rng.choice(LANGUAGES)) for _ in range(count)]
