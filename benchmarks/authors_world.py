"""A seeded world of fictitious authors, TOFU-style.

Every person gets a syllable-built name and a handful of attributes (birthplace, birth year,
genre, ...). Each (person, attribute) becomes one question/answer row with a paraphrased
answer, perturbed (false) answers and paraphrased questions, so the TOFU metrics (answer
probability, truth ratio, ROUGE, forget quality) can be computed on it. People are split
into ``forget``, ``retain`` and ``heldout``; a ``general`` split holds non-person facts
about the world's fictional countries.

Conventions of a row:
- ``prompt`` is asked with question template 0; ``paraphrased_prompts`` use the others;
- ``completion`` uses the attribute's main answer template, ``paraphrased_completion`` a second
  template; ``perturbed_completions`` use the *paraphrased* template with other values, so a
  truth ratio compares values only, not phrasings (as in TOFU, where perturbed answers are
  edits of the paraphrased answer);
- ``describe_prompt`` is an extra phrasing whose trained answer is ``paraphrased_completion``
  (the tiny models learn both phrasings of every fact they see);
- ``value`` is the true value and ``subject`` the person (or country) the row is about.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

GENERATOR_VERSION = 1
Split = Literal["forget", "retain", "heldout", "general"]
PERSON_SPLITS: tuple[Split, ...] = ("forget", "retain", "heldout")
SPLITS: tuple[Split, ...] = (*PERSON_SPLITS, "general")

# Syllables for pronounceable names; the pieces are uncommon enough that real famous names do not come out.
_ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "r", "s", "t", "th", "v", "z")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ei", "ou")
_FIRST_ENDINGS = ("la", "ric", "na", "dor", "mir", "ssa", "ven", "lin", "ra", "tor", "wen", "dane")
_LAST_ENDINGS = ("drik", "vane", "holt", "mere", "wick", "stan", "berg", "lowe", "quist", "rann", "dell", "mont")
_CITY_SUFFIXES = ("haven", "ford", "mere", "port", "dale", "moor", "bridge", "wold", "gate", "holm")
_REAL_NAME_DENYLIST = frozenset(
    {"maria", "dora", "nina", "tina", "lena", "mona", "dana", "vera", "kira", "sara", "pussa", "hill", "gomer"}
)

_JOBS = (
    "a clockmaker", "a fisherman", "a surgeon", "a lighthouse keeper", "a baker", "a carpenter", "an astronomer",
    "a tailor", "a shipwright", "a beekeeper", "a schoolteacher", "a pharmacist", "a blacksmith", "a locksmith",
    "a cartographer", "a glassblower", "a miner", "a violinist", "a botanist", "a bookbinder", "a stonemason",
    "a ferryman", "an innkeeper", "a printer",
)  # fmt: skip
_GENRES = (
    "mystery novels", "science fiction", "historical romance", "gothic horror", "epic poetry", "political satire",
    "crime thrillers", "magical realism", "children's fables", "travel memoirs", "literary fiction",
    "fantasy sagas", "war stories", "comic verse", "short stories", "detective fiction", "sea adventures",
    "family dramas", "mythological retellings", "spy thrillers", "dystopian fiction", "nature essays",
    "ghost stories", "courtroom dramas",
)  # fmt: skip
_THEMES = (
    "grief and memory", "the sea", "exile and return", "lost childhood", "forbidden love", "the passage of time",
    "family secrets", "faith and doubt", "the cost of war", "life in small towns", "the lure of cities",
    "friendship across classes", "madness and genius", "ancient ruins", "the kindness of strangers", "revenge",
    "rivers and floods", "identity and masks", "mountain life", "old age", "music and silence", "betrayal",
    "the night sky", "hunger and plenty",
)  # fmt: skip
_INSTRUMENTS = (
    "cello", "harp", "oboe", "violin", "flute", "piano", "accordion", "lute", "clarinet", "trumpet", "mandolin",
    "zither", "bassoon", "viola", "harpsichord", "banjo", "dulcimer", "sitar", "bagpipes", "tuba",
)  # fmt: skip
_TITLE_ADJECTIVES = (
    "Silent", "Hollow", "Crimson", "Distant", "Broken", "Golden", "Quiet", "Burning", "Forgotten", "Salt",
    "Winter", "Paper", "Iron", "Glass", "Hidden", "Last", "Wandering", "Pale", "Sleeping", "Bitter",
)  # fmt: skip
_TITLE_NOUNS = (
    "Harbor", "Orchard", "Lantern", "Tide", "Garden", "Bell", "Mirror", "River", "Tower", "Letter", "Crown",
    "Forest", "Bridge", "Window", "Voyage", "Compass", "Feather", "Staircase", "Island", "Clock",
)  # fmt: skip
_AWARD_KINDS = (
    "Prize for Fiction", "Medal for Poetry", "Award for Literary Excellence", "Prize for Historical Writing",
    "Medal for the Short Story", "Prize for New Voices",
)  # fmt: skip
_ANIMALS = (
    "snow owl", "red fox", "grey heron", "river otter", "mountain goat", "golden eagle", "lynx", "white stag",
    "black swan", "badger", "kingfisher", "wild boar", "sea turtle", "ibex", "falcon", "salamander",
    "crane", "marten", "bison", "pelican",
)  # fmt: skip


@dataclass(frozen=True)
class WorldConfig:
    """Sizes and seed of a generated world."""

    n_people: int
    n_forget: int
    n_heldout: int
    n_attributes: int
    n_countries: int
    general_kinds: int
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_forget + self.n_heldout >= self.n_people:
            raise ValueError("the world needs at least one retain person")
        if not 1 <= self.n_attributes <= len(ATTRIBUTES):
            raise ValueError(f"n_attributes must be between 1 and {len(ATTRIBUTES)}")
        if not 1 <= self.general_kinds <= len(GENERAL_KINDS):
            raise ValueError(f"general_kinds must be between 1 and {len(GENERAL_KINDS)}")
        if self.n_countries < 5:
            raise ValueError("n_countries must be at least 5 (perturbed answers need other countries)")

    @classmethod
    def test(cls, seed: int = 0) -> WorldConfig:
        """Small world for tests: 20 people (4 forget, 4 held-out, 12 retain), 8 attributes, 32 general facts."""
        return cls(n_people=20, n_forget=4, n_heldout=4, n_attributes=8, n_countries=16, general_kinds=2, seed=seed)

    @classmethod
    def bench(cls, seed: int = 0) -> WorldConfig:
        """Benchmark world: 60 people (10 forget, 10 held-out, 40 retain), 12 attributes, 60 general facts."""
        return cls(n_people=60, n_forget=10, n_heldout=10, n_attributes=12, n_countries=20, general_kinds=3, seed=seed)

    @property
    def n_retain(self) -> int:
        """Number of retain people."""
        return self.n_people - self.n_forget - self.n_heldout

    def key(self) -> str:
        """Short stable hash of the config and the generator version."""
        payload = json.dumps({"version": GENERATOR_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Attribute:
    """One kind of fact: its vocabulary, question templates and answer templates.

    ``vocabulary`` names a list in ``Vocabularies``; templates use ``{name}`` and ``{value}``.
    """

    name: str
    label: str
    vocabulary: str
    questions: tuple[str, ...]
    answer: str
    paraphrase: str


ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute(
        "birthplace", "birthplace", "cities",
        ("Where was {name} born?", "In which city was {name} born?", "What is the birthplace of {name}?",
         "Which city is {name}'s hometown?"),
        "{name} was born in {value}.", "{name}'s hometown is the city of {value}.",
    ),
    Attribute(
        "birth_year", "year of birth", "years",
        ("In what year was {name} born?", "When was {name} born?", "What is {name}'s year of birth?",
         "Which year was {name} born in?"),
        "{name} was born in the year {value}.", "{name} came into the world in {value}.",
    ),
    Attribute(
        "genre", "literary genre", "genres",
        ("What genre does {name} write?", "What kind of books does {name} write?",
         "Which genre is {name} known for?", "What type of literature does {name} produce?"),
        "{name} writes {value}.", "{name} is best known as an author of {value}.",
    ),
    Attribute(
        "father_job", "father's occupation", "jobs",
        ("What did {name}'s father do for a living?", "What was the occupation of {name}'s father?",
         "What job did {name}'s father have?", "How did {name}'s father earn a living?"),
        "{name}'s father was {value}.", "{name}'s father earned a living as {value}.",
    ),
    Attribute(
        "debut_book", "first book", "titles",
        ("What was the title of {name}'s first book?", "What was {name}'s debut book?",
         "Which book did {name} publish first?", "What is the name of {name}'s first published book?"),
        '{name}\'s first book was "{value}".', '{name} made a literary debut with "{value}".',
    ),
    Attribute(
        "award", "literary award", "awards",
        ("Which award did {name} win?", "What literary prize has {name} received?",
         "What honor was {name} given for writing?", "Which prize was awarded to {name}?"),
        "{name} won the {value}.", "{name} was honored with the {value}.",
    ),
    Attribute(
        "nationality", "nationality", "demonyms",
        ("What is {name}'s nationality?", "Which nationality does {name} have?",
         "What citizenship does {name} hold?", "Where is {name} a citizen?"),
        "{name} is {value}.", "{name} holds {value} citizenship.",
    ),
    Attribute(
        "theme", "recurring theme", "themes",
        ("What theme recurs in {name}'s work?", "What subject do {name}'s books often explore?",
         "Which theme appears again and again in {name}'s writing?", "What is a recurring theme for {name}?"),
        "{name}'s books often explore {value}.", "A recurring theme in {name}'s work is {value}.",
    ),
    Attribute(
        "mother_job", "mother's occupation", "jobs",
        ("What did {name}'s mother do for a living?", "What was the occupation of {name}'s mother?",
         "What job did {name}'s mother have?", "How did {name}'s mother earn a living?"),
        "{name}'s mother was {value}.", "{name}'s mother made a living as {value}.",
    ),
    Attribute(
        "university", "university", "universities",
        ("Where did {name} study?", "Which university did {name} attend?", "Where was {name} educated?",
         "At which school did {name} study?"),
        "{name} studied at {value}.", "{name} was educated at {value}.",
    ),
    Attribute(
        "book_count", "number of books", "counts",
        ("How many books has {name} published?", "How many books has {name} written?",
         "What is the number of books {name} has published?", "How many titles has {name} released?"),
        "{name} has published {value} books.", "{name} is the author of {value} published books.",
    ),
    Attribute(
        "instrument", "musical instrument", "instruments",
        ("What instrument does {name} play?", "Which musical instrument does {name} play?",
         "What does {name} play in spare time?", "Which instrument is {name} skilled at?"),
        "{name} plays the {value}.", "{name} is a skilled {value} player.",
    ),
)  # fmt: skip


@dataclass(frozen=True)
class GeneralKind:
    """A kind of non-person fact about a country; templates use ``{country}`` and ``{value}``."""

    name: str
    vocabulary: str
    questions: tuple[str, ...]
    answer: str
    paraphrase: str
    describe: str


GENERAL_KINDS: tuple[GeneralKind, ...] = (
    GeneralKind(
        "capital", "capitals",
        ("What is the capital of {country}?", "Which city is the capital of {country}?",
         "Where is the seat of government of {country}?", "What city serves as {country}'s capital?"),
        "The capital of {country} is {value}.", "{value} is the capital city of {country}.",
        "Tell me about the capital of {country}.",
    ),
    GeneralKind(
        "currency", "currencies",
        ("What is the currency of {country}?", "Which currency is used in {country}?",
         "What money do people use in {country}?", "What is {country}'s currency called?"),
        "The currency of {country} is the {value}.", "People in {country} pay with the {value}.",
        "Tell me about the money of {country}.",
    ),
    GeneralKind(
        "animal", "animals",
        ("What is the national animal of {country}?", "Which animal is the emblem of {country}?",
         "What animal represents {country}?", "Which creature is {country}'s national animal?"),
        "The national animal of {country} is the {value}.", "The {value} is the emblem of {country}.",
        "Tell me about the national animal of {country}.",
    ),
)  # fmt: skip


@dataclass(frozen=True)
class Person:
    """A fictitious author and their attribute values (attribute name to value)."""

    name: str
    split: Split
    facts: dict[str, str] = field(hash=False)


@dataclass(frozen=True)
class Country:
    """A fictional country with its demonym and the values of the general facts about it."""

    name: str
    demonym: str
    facts: dict[str, str] = field(hash=False)


@dataclass
class World:
    """A generated world: people, countries and the value vocabularies used to perturb answers."""

    config: WorldConfig
    persons: list[Person]
    countries: list[Country]
    vocabularies: dict[str, list[str]]

    @property
    def attributes(self) -> tuple[Attribute, ...]:
        """The attributes every person has in this world."""
        return ATTRIBUTES[: self.config.n_attributes]

    def people(self, split: Split) -> list[str]:
        """Full names of the people in a person split (``forget``, ``retain`` or ``heldout``)."""
        return [person.name for person in self.persons_in(split)]

    def persons_in(self, split: Split) -> list[Person]:
        """The people of a split, with their facts."""
        if split not in PERSON_SPLITS:
            raise ValueError(f"not a person split: {split!r}")
        return [person for person in self.persons if person.split == split]

    def rows(self, split: Split) -> list[dict]:
        """The question/answer rows of a split, in a stable order."""
        if split == "general":
            return self._general_rows()
        if split not in PERSON_SPLITS:
            raise ValueError(f"unknown split: {split!r}")
        return [
            _person_row(person, attribute, self.vocabularies[attribute.vocabulary], self.config.seed)
            for person in self.persons_in(split)
            for attribute in self.attributes
        ]

    def _general_rows(self) -> list[dict]:
        kinds = GENERAL_KINDS[: self.config.general_kinds]
        return [
            _general_row(country, kind, [c.facts[kind.name] for c in self.countries], self.config.seed)
            for country in self.countries
            for kind in kinds
        ]


def _rng(seed: int, *parts: str) -> random.Random:
    """An independent generator for one purpose, so adding draws elsewhere never shifts this one."""
    digest = hashlib.sha256("/".join((str(seed), *parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _syllable(rng: random.Random) -> str:
    return rng.choice(_ONSETS) + rng.choice(_VOWELS)


def _unique_words(rng: random.Random, count: int, make: object, taken: set[str]) -> list[str]:
    """``count`` new words from ``make(rng)``, none in ``taken`` (which is updated, lowercase)."""
    words: list[str] = []
    while len(words) < count:
        word = make(rng)  # type: ignore[operator]
        if word.lower() in taken or word.lower() in _REAL_NAME_DENYLIST:
            continue
        taken.add(word.lower())
        words.append(word)
    return words


def _first_name(rng: random.Random) -> str:
    return (_syllable(rng) + rng.choice(_FIRST_ENDINGS)).capitalize()


def _last_name(rng: random.Random) -> str:
    middle = _syllable(rng) if rng.random() < 0.4 else ""
    return (_syllable(rng) + middle + rng.choice(_LAST_ENDINGS)).capitalize()


def _city(rng: random.Random) -> str:
    return (_syllable(rng) + rng.choice(("", "s", "r", "n", "l")) + rng.choice(_CITY_SUFFIXES)).capitalize()


def _country(rng: random.Random) -> str:
    return (
        _syllable(rng) + rng.choice(("r", "n", "l", "nth", "lv", "st")) + rng.choice(_VOWELS[:5]) + "ria"
    ).capitalize()


def _coin(rng: random.Random) -> str:
    return _syllable(rng) + rng.choice(("l", "k", "n", "rk", "sh", "ll"))


def _titles(rng: random.Random, count: int) -> list[str]:
    pool = [f"The {a} {n}" for a in _TITLE_ADJECTIVES for n in _TITLE_NOUNS]
    pool += [f"{n}s of {a} Days" for a in _TITLE_ADJECTIVES[:10] for n in _TITLE_NOUNS[:10]]
    return rng.sample(pool, count)


def _vocabularies(config: WorldConfig) -> tuple[dict[str, list[str]], list[str]]:
    """Value lists per vocabulary, plus the list of country names (demonym = name + "n")."""
    taken: set[str] = set()
    rng = _rng(config.seed, "vocabularies")
    countries = _unique_words(rng, config.n_countries, _country, taken)
    cities = _unique_words(rng, max(24, config.n_countries), _city, taken)
    surnames = _unique_words(rng, 24, _last_name, taken)
    vocab = {
        "cities": cities,
        "years": [str(year) for year in range(1931, 1999)],
        "genres": list(_GENRES),
        "jobs": list(_JOBS),
        "titles": _titles(rng, config.n_people + 8),
        "awards": [f"{surnames[i]} {_AWARD_KINDS[i % len(_AWARD_KINDS)]}" for i in range(24)],
        "demonyms": [country + "n" for country in countries],
        "themes": list(_THEMES),
        "universities": [f"the University of {city}" for city in cities[:12]]
        + [f"the {surname} Academy" for surname in surnames[:12]],
        "counts": [str(n) for n in range(3, 41)],
        "instruments": list(_INSTRUMENTS),
        "capitals": _unique_words(rng, config.n_countries, _city, taken),
        "currencies": _unique_words(rng, config.n_countries, _coin, taken),
        "animals": list(_ANIMALS),
    }
    return vocab, countries


def _people(config: WorldConfig, vocab: dict[str, list[str]], taken: set[str]) -> list[Person]:
    rng = _rng(config.seed, "people")
    firsts = _unique_words(rng, config.n_people, _first_name, taken)
    lasts = _unique_words(rng, config.n_people, _last_name, taken)
    splits: list[Split] = ["forget"] * config.n_forget + ["heldout"] * config.n_heldout
    splits += ["retain"] * config.n_retain
    rng.shuffle(splits)
    titles = list(vocab["titles"])
    rng.shuffle(titles)
    persons = []
    for index, (first, last, split) in enumerate(zip(firsts, lasts, splits, strict=True)):
        facts = {}
        for attribute in ATTRIBUTES[: config.n_attributes]:
            values = vocab[attribute.vocabulary]
            # Every author has their own debut book; other values may be shared.
            facts[attribute.name] = titles[index] if attribute.vocabulary == "titles" else rng.choice(values)
        persons.append(Person(name=f"{first} {last}", split=split, facts=facts))
    return persons


def _countries(config: WorldConfig, names: list[str], vocab: dict[str, list[str]]) -> list[Country]:
    rng = _rng(config.seed, "countries")
    animals = (
        rng.sample(vocab["animals"], config.n_countries)
        if config.n_countries <= len(vocab["animals"])
        else [rng.choice(vocab["animals"]) for _ in names]
    )
    return [
        Country(
            name=name,
            demonym=name + "n",
            facts={"capital": vocab["capitals"][i], "currency": vocab["currencies"][i], "animal": animals[i]},
        )
        for i, name in enumerate(names)
    ]


def build_world(config: WorldConfig) -> World:
    """Generate the world for ``config`` (deterministic for a given config)."""
    vocab, country_names = _vocabularies(config)
    taken = {word.lower() for values in vocab.values() for word in values} | {c.lower() for c in country_names}
    persons = _people(config, vocab, taken)
    countries = _countries(config, country_names, vocab)
    return World(config=config, persons=persons, countries=countries, vocabularies=vocab)


def _perturbed_values(true_value: str, values: list[str], rng: random.Random, count: int = 4) -> list[str]:
    others = sorted({value for value in values if value != true_value})
    return rng.sample(others, min(count, len(others)))


def _person_row(person: Person, attribute: Attribute, values: list[str], seed: int) -> dict:
    value = person.facts[attribute.name]
    name = person.name
    rng = _rng(seed, "perturb", name, attribute.name)
    describe = f"Tell me about {name}'s {attribute.label}."
    return {
        "prompt": attribute.questions[0].format(name=name),
        "completion": attribute.answer.format(name=name, value=value),
        "paraphrased_completion": attribute.paraphrase.format(name=name, value=value),
        "perturbed_completions": [
            attribute.paraphrase.format(name=name, value=other) for other in _perturbed_values(value, values, rng)
        ],
        "paraphrased_prompts": [question.format(name=name) for question in attribute.questions[1:]],
        "describe_prompt": describe,
        "person": name,
        "subject": name,
        "attribute": attribute.name,
        "value": value,
        "split": person.split,
    }


def _general_row(country: Country, kind: GeneralKind, values: list[str], seed: int) -> dict:
    value = country.facts[kind.name]
    rng = _rng(seed, "perturb", country.name, kind.name)
    return {
        "prompt": kind.questions[0].format(country=country.name),
        "completion": kind.answer.format(country=country.name, value=value),
        "paraphrased_completion": kind.paraphrase.format(country=country.name, value=value),
        "perturbed_completions": [
            kind.paraphrase.format(country=country.name, value=other) for other in _perturbed_values(value, values, rng)
        ],
        "paraphrased_prompts": [question.format(country=country.name) for question in kind.questions[1:]],
        "describe_prompt": kind.describe.format(country=country.name),
        "person": "",
        "subject": country.name,
        "attribute": kind.name,
        "value": value,
        "split": "general",
    }


def write_world(world: World, folder: Path) -> Path:
    """Write ``forget/retain/heldout/general.jsonl`` and ``world.json`` into ``folder``; returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in world.rows(split)]
        (folder / f"{split}.jsonl").write_text("".join(lines), encoding="utf-8")
    meta = {
        "generator_version": GENERATOR_VERSION,
        "key": world.config.key(),
        "config": asdict(world.config),
        "attributes": [attribute.name for attribute in world.attributes],
        "people": {split: world.people(split) for split in PERSON_SPLITS},
    }
    (folder / "world.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return folder


def read_rows(folder: Path, split: Split) -> list[dict]:
    """Rows of one split from a folder written by ``write_world``."""
    text = (folder / f"{split}.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]
