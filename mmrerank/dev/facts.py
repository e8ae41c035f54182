"""A small multilingual world of invented places and their facts: retrieval data whose relevance is real.

Every place has seven facts (where its river meets the sea, when it was founded, how many people
live there, ...), each written as a statement and asked as a question in five languages. A document
is relevant to a query when it states the asked fact of the asked place. Hard negatives share words
with the query: the same fact about another place, or another fact about the same place. Documents
run from one sentence to thousands of tokens: the answer sits among other places' facts.

Places are split by name into disjoint sets, so the demo is trained on one set and evaluated
(`mmrerank.dev.task_data.write_beir`) and needle-tested (`mmrerank.dev.needle`) on places it never saw.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

LANGUAGES: tuple[str, ...] = ("en", "de", "fr", "es", "sw")

GOODS: dict[str, tuple[str, ...]] = {
    "en": ("salt", "wool", "tea", "copper", "fish", "silk", "honey", "rice"),
    "de": ("Salz", "Wolle", "Tee", "Kupfer", "Fisch", "Seide", "Honig", "Reis"),
    "fr": ("du sel", "de la laine", "du thé", "du cuivre", "du poisson", "de la soie", "du miel", "du riz"),
    "es": ("sal", "lana", "té", "cobre", "pescado", "seda", "miel", "arroz"),
    "sw": ("chumvi", "sufu", "chai", "shaba", "samaki", "hariri", "asali", "mchele"),
}
SOURCES: dict[str, tuple[str, ...]] = {
    "en": ("the wind", "the sun", "its dams", "coal", "the tides", "hot springs"),
    "de": ("dem Wind", "der Sonne", "seinen Staudämmen", "Kohle", "den Gezeiten", "heißen Quellen"),
    "fr": ("du vent", "du soleil", "de ses barrages", "du charbon", "des marées", "de sources chaudes"),
    "es": ("del viento", "del sol", "de sus presas", "del carbón", "de las mareas", "de fuentes termales"),
    "sw": ("upepo", "jua", "mabwawa yake", "makaa ya mawe", "mawimbi", "chemchemi za moto"),
}

# relation -> language -> (question, statement); {place} is the place asked about, {value} the fact.
TEMPLATES: dict[str, dict[str, tuple[str, str]]] = {
    "sea": {
        "en": ("where does the river {place} meet the sea?", "The river {place} reaches the sea at {value}."),
        "de": ("wo mündet der Fluss {place} ins Meer?", "Der Fluss {place} erreicht das Meer bei {value}."),
        "fr": ("où le fleuve {place} rejoint-il la mer ?", "Le fleuve {place} atteint la mer à {value}."),
        "es": ("¿dónde desemboca el río {place} en el mar?", "El río {place} llega al mar en {value}."),
        "sw": ("mto {place} unakutana na bahari wapi?", "Mto {place} unafika baharini huko {value}."),
    },
    "founded": {
        "en": ("when was the city of {place} founded?", "The city of {place} was founded in {value}."),
        "de": ("wann wurde die Stadt {place} gegründet?", "Die Stadt {place} wurde im Jahr {value} gegründet."),
        "fr": ("quand la ville de {place} a-t-elle été fondée ?", "La ville de {place} a été fondée en {value}."),
        "es": ("¿cuándo se fundó la ciudad de {place}?", "La ciudad de {place} fue fundada en {value}."),
        "sw": ("mji wa {place} ulianzishwa lini?", "Mji wa {place} ulianzishwa mwaka {value}."),
    },
    "people": {
        "en": ("how many people live in {place}?", "About {value} people live in {place}."),
        "de": ("wie viele Menschen leben in {place}?", "In {place} leben etwa {value} Menschen."),
        "fr": ("combien de personnes vivent à {place} ?", "Environ {value} personnes vivent à {place}."),
        "es": ("¿cuántas personas viven en {place}?", "En {place} viven unas {value} personas."),
        "sw": ("watu wangapi wanaishi {place}?", "Takriban watu {value} wanaishi {place}."),
    },
    "mountain": {
        "en": ("how high is mount {place}?", "Mount {place} rises {value} metres above the valley."),
        "de": ("wie hoch ist der Berg {place}?", "Der Berg {place} ist {value} Meter hoch."),
        "fr": ("quelle est la hauteur du mont {place} ?", "Le mont {place} s'élève à {value} mètres."),
        "es": ("¿qué altura tiene el monte {place}?", "El monte {place} tiene {value} metros de altura."),
        "sw": ("mlima {place} una urefu gani?", "Mlima {place} una urefu wa mita {value}."),
    },
    "library": {
        "en": ("how many books does the library of {place} hold?", "The library of {place} holds {value} books."),
        "de": (
            "wie viele Bücher hat die Bibliothek von {place}?",
            "Die Bibliothek von {place} besitzt {value} Bücher.",
        ),
        "fr": (
            "combien de livres la bibliothèque de {place} possède-t-elle ?",
            "La bibliothèque de {place} possède {value} livres.",
        ),
        "es": ("¿cuántos libros tiene la biblioteca de {place}?", "La biblioteca de {place} tiene {value} libros."),
        "sw": ("maktaba ya {place} ina vitabu vingapi?", "Maktaba ya {place} ina vitabu {value}."),
    },
    "market": {
        "en": ("what is sold at the market of {place}?", "The market of {place} is known for its {value}."),
        "de": (
            "was wird auf dem Markt von {place} verkauft?",
            "Auf dem Markt von {place} wird vor allem {value} verkauft.",
        ),
        "fr": ("que vend-on au marché de {place} ?", "Au marché de {place}, on vend surtout {value}."),
        "es": ("¿qué se vende en el mercado de {place}?", "En el mercado de {place} se vende sobre todo {value}."),
        "sw": ("soko la {place} linauza nini?", "Soko la {place} linauza hasa {value}."),
    },
    "energy": {
        "en": ("where does {place} get its energy from?", "{place} gets its energy from {value}."),
        "de": ("woher bezieht {place} seine Energie?", "{place} bezieht seine Energie aus {value}."),
        "fr": ("d'où {place} tire-t-elle son énergie ?", "{place} tire son énergie {value}."),
        "es": ("¿de dónde obtiene {place} su energía?", "{place} obtiene su energía {value}."),
        "sw": ("{place} inapata nishati yake kutoka wapi?", "{place} inapata nishati yake kutoka {value}."),
    },
}
RELATIONS: tuple[str, ...] = tuple(TEMPLATES)

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "kr", "st", "tr", "ch")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
_CODAS = ("", "", "", "n", "r", "s", "l")


def place_names(count: int, seed: int) -> list[str]:
    """`count` distinct invented place names (2-3 syllables, capitalised)."""
    rng = random.Random(seed)
    names: dict[str, None] = {}
    while len(names) < count:
        syllables = [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.randint(2, 3))]
        names["".join(syllables).capitalize() + rng.choice(_CODAS)] = None
    return list(names)


@dataclass(frozen=True)
class Fact:
    """One fact of one place: `relation` has `value` (language-neutral: an index, a number or a name)."""

    place: str
    relation: str
    value: str | int

    def statement(self, language: str) -> str:
        """The fact as a sentence in `language`."""
        return TEMPLATES[self.relation][language][1].format(place=self.place, value=self._value(language))

    def question(self, language: str) -> str:
        """The question this fact answers, in `language`."""
        return TEMPLATES[self.relation][language][0].format(place=self.place)

    def _value(self, language: str) -> str:
        if self.relation == "market":
            return GOODS[language][int(self.value)]
        if self.relation == "energy":
            return SOURCES[language][int(self.value)]
        return str(self.value)


class World:
    """Places with one fact per relation, drawn from a seed; other places' facts fill long documents."""

    def __init__(self, places: list[str], seed: int) -> None:
        self.places = places
        self.rng = random.Random(seed)
        deltas = place_names(len(places) + 64, seed + 7919)
        self.facts = {place: self._facts_of(place, deltas) for place in places}

    def _facts_of(self, place: str, deltas: list[str]) -> dict[str, Fact]:
        rng = self.rng
        values: dict[str, str | int] = {
            "sea": rng.choice(deltas),
            "founded": rng.randint(600, 1990),
            "people": rng.randint(2, 900) * 1000 + rng.randint(0, 999),
            "mountain": rng.randint(800, 8400),
            "library": rng.randint(5, 900) * 100,
            "market": rng.randrange(len(GOODS["en"])),
            "energy": rng.randrange(len(SOURCES["en"])),
        }
        return {relation: Fact(place, relation, values[relation]) for relation in RELATIONS}

    def random_fact(self, excluding: Fact | None = None) -> Fact:
        """Any fact but `excluding`'s (its place's facts are excluded too, so it cannot answer by accident)."""
        while True:
            place = self.rng.choice(self.places)
            if excluding is None or place != excluding.place:
                return self.facts[place][self.rng.choice(RELATIONS)]

    def near_misses(self, fact: Fact) -> list[Fact]:
        """Facts that share words with `fact`'s question but do not answer it."""
        other = self.random_fact(excluding=fact)
        same_relation = self.facts[other.place][fact.relation]
        same_place = self.facts[fact.place][self.rng.choice([r for r in RELATIONS if r != fact.relation])]
        return [same_relation, same_place]

    def document(self, language: str, core: list[Fact], filler_sentences: int, query: Fact | None = None) -> str:
        """`core` facts placed at random among `filler_sentences` facts of places other than `query`'s."""
        sentences = [self.random_fact(excluding=query).statement(language) for _ in range(filler_sentences)]
        for fact in core:
            sentences.insert(self.rng.randint(0, len(sentences)), fact.statement(language))
        return " ".join(sentences)

    def filler_length(self, long_documents: bool = True) -> int:
        """How many other facts surround a document's own: mostly none or a few, sometimes hundreds.

        Without `long_documents`, at most three.
        """
        draw = self.rng.random()
        if draw < 0.4:
            return 0
        if not long_documents:
            return self.rng.randint(1, 3)
        if draw < 0.7:
            return self.rng.randint(1, 8)
        if draw < 0.9:
            return self.rng.randint(10, 40)
        return self.rng.randint(60, 200)


def held_out_world(num_places: int = 120, seed: int = 1) -> World:
    """Places disjoint from every training place (their names are checked against the training pool)."""
    seen = set(place_names(400, 0))
    candidates = [name for name in place_names(num_places * 3, 10_000 + seed) if name not in seen]
    return World(candidates[:num_places], 10_000 + seed)


def text_lines(seed: int = 0, count: int = 6000) -> Iterator[str]:
    """Questions and statements of every language, for training the demo's tokenizer."""
    world = World(place_names(400, seed), seed)
    for index in range(count):
        language = LANGUAGES[index % len(LANGUAGES)]
        fact = world.random_fact()
        yield fact.question(language) if index % 3 == 0 else fact.statement(language)
