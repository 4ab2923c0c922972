"""Builds the shipped negative pool in ``classifier/data/`` (run once: ``python -m classifier.pool_build``).

Sources: gensim's bundled news corpus (``lee_background.cor``, ``lee.cor``), its shortened English
Wikipedia dump, and generic questions on other topics generated from the templates below.
``pang_lee_polarity.cor`` is deliberately not used: it is reserved for a sentiment benchmark.
"""

from __future__ import annotations

import bz2
import hashlib
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
MAX_NEWS = 2200
MAX_WIKI = 1800
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[A-Z\"'(])")
_BAD_CHARS = re.compile(r"[|=\[\]{}<>*#_\\]|https?:|www\.")

COUNTRIES = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Portugal", "Lisbon"),
    ("Japan", "Tokyo"), ("China", "Beijing"), ("India", "New Delhi"), ("Brazil", "Brasilia"),
    ("Argentina", "Buenos Aires"), ("Canada", "Ottawa"), ("Australia", "Canberra"), ("Egypt", "Cairo"),
    ("Kenya", "Nairobi"), ("Nigeria", "Abuja"), ("Mexico", "Mexico City"), ("Peru", "Lima"),
    ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Poland", "Warsaw"),
    ("Greece", "Athens"), ("Turkey", "Ankara"), ("Russia", "Moscow"), ("South Korea", "Seoul"),
    ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("Indonesia", "Jakarta"), ("Chile", "Santiago"),
    ("Ireland", "Dublin"), ("the Netherlands", "Amsterdam"), ("Austria", "Vienna"), ("Hungary", "Budapest"),
]
COUNTRY_TEMPLATES = [
    "What is the capital of {c}?", "Which city is the capital of {c}?", "What language is spoken in {c}?",
    "What currency does {c} use?", "How many people live in {c}?", "What is the population of {cap}?",
    "Which country has {cap} as its capital?", "What are the main tourist attractions in {cap}?",
    "What is the climate like in {c}?", "Tell me about the history of {c}.",
]
SCIENCE = [
    "Why is the sky blue?", "What is photosynthesis?", "How do vaccines work?", "What is the speed of light?",
    "What is the boiling point of water at sea level?", "How far is the Moon from the Earth?",
    "What causes the seasons on Earth?", "What is DNA made of?", "How do black holes form?",
    "What is the difference between a virus and a bacterium?", "What is Newton's second law of motion?",
    "Why do objects fall at the same rate in a vacuum?", "What is the largest planet in the solar system?",
    "How does a rainbow form?", "What is an atom?", "What is the chemical formula of table salt?",
    "How do plants absorb water?", "What is entropy?", "What is the theory of evolution?",
    "How does the human heart pump blood?", "What are tectonic plates?", "Why do we have tides?",
    "What is the half-life of carbon-14?", "How do magnets work?", "What is quantum entanglement?",
    "What is the periodic table?", "How hot is the surface of the Sun?", "What is a light year?",
    "How do earthquakes happen?", "What is the function of the liver?", "Why is sea water salty?",
    "How many bones are in the adult human body?", "What is the greenhouse effect?",
    "What does a mitochondrion do?", "How do bees make honey?", "What is the pH of pure water?",
]
COOKING = [
    "How do I make a simple tomato sauce?", "How long should I boil an egg?", "What is the best way to cook rice?",
    "How do you make pancakes from scratch?", "What spices go well with lentils?", "How do I bake sourdough bread?",
    "What is the difference between baking soda and baking powder?", "How do I make a vegetable stir fry?",
    "How long does it take to roast a chicken?", "What is a good substitute for eggs in baking?",
    "How do I make guacamole?", "What temperature should I cook salmon at?", "How do I caramelize onions?",
    "What is risotto and how is it made?", "How do you make a vinaigrette?", "How do I keep pasta from sticking?",
    "Can you give me a recipe for chocolate chip cookies?", "How do I make hummus at home?",
    "What is the secret to crispy roast potatoes?", "How do I make a French omelette?",
    "What can I cook with chickpeas and spinach?", "How do you brew a good cup of tea?",
    "How should I store fresh herbs?", "What is umami?", "How do I make pizza dough?",
]
SPORTS = [
    "How many players are on a soccer team?", "What are the rules of tennis scoring?",
    "How long is a marathon?", "Who won the FIFA World Cup in 2018?", "How is a basketball game timed?",
    "What is offside in football?", "How many holes are there in a round of golf?",
    "What is a hat trick in cricket?", "How often are the Olympic Games held?", "What is the Tour de France?",
    "How do you score a try in rugby?", "What is the difference between a marathon and a triathlon?",
    "How heavy is an Olympic barbell?", "What is a grand slam in tennis?", "How long is an ice hockey game?",
    "Who holds the record for the 100 metres sprint?", "How do I improve my running endurance?",
    "What muscles does swimming work?", "How is a chess game won?", "What is a good warm-up before a run?",
    "Which country has won the most Olympic medals?", "How big is a volleyball court?",
]
HISTORY = [
    "When did World War II end?", "Who was the first president of the United States?",
    "What caused the fall of the Roman Empire?", "When was the Magna Carta signed?",
    "What was the Renaissance?", "Who built the pyramids of Giza?", "When did the Berlin Wall fall?",
    "What was the Industrial Revolution?", "Who was Napoleon Bonaparte?", "When did humans first land on the Moon?",
    "What was the Cold War?", "Who was Cleopatra?", "What was the French Revolution about?",
    "When was the printing press invented?", "Who was Genghis Khan?", "What was the Silk Road?",
    "Why did the Titanic sink?", "Who was Mahatma Gandhi?", "When did the American Civil War start?",
    "What was the Ottoman Empire?", "Who was Queen Victoria?", "What happened at the Battle of Hastings?",
    "Who discovered penicillin?", "Who invented the telephone?", "Who painted the Mona Lisa?",
    "When was the United Nations founded?", "Who was Nelson Mandela?", "What was apartheid?",
]
PROGRAMMING = [
    "How do I reverse a list in Python?", "What is the difference between a list and a tuple?",
    "How do I read a file line by line in Python?", "What is a closure in JavaScript?",
    "How does garbage collection work in Java?", "What is a REST API?", "How do I undo the last git commit?",
    "What is the difference between TCP and UDP?", "How do I sort a dictionary by value in Python?",
    "What is a race condition?", "Explain big O notation.", "What is recursion?",
    "How do I center a div in CSS?", "What is a hash table?", "How do I write a SQL join?",
    "What is the difference between a process and a thread?", "How do I install a package with pip?",
    "What is dependency injection?", "How does a binary search work?", "What is a Docker container?",
    "How do I handle exceptions in Python?", "What is a pointer in C?", "How do I parse JSON in Go?",
    "What does the static keyword mean in Java?", "How do I profile a slow Python program?",
    "Write a function that checks whether a string is a palindrome.", "What is unit testing?",
    "How do I merge two branches in git?", "What is the difference between SQL and NoSQL databases?",
    "Why does my Rust code say the value was moved?", "What is a regular expression?",
]
BOOKS = [
    ("Pride and Prejudice", "Jane Austen"), ("Moby-Dick", "Herman Melville"), ("War and Peace", "Leo Tolstoy"),
    ("Crime and Punishment", "Fyodor Dostoevsky"), ("One Hundred Years of Solitude", "Gabriel Garcia Marquez"),
    ("Nineteen Eighty-Four", "George Orwell"), ("The Great Gatsby", "F. Scott Fitzgerald"),
    ("To Kill a Mockingbird", "Harper Lee"), ("Don Quixote", "Miguel de Cervantes"), ("Ulysses", "James Joyce"),
    ("Mrs Dalloway", "Virginia Woolf"), ("The Old Man and the Sea", "Ernest Hemingway"),
    ("Beloved", "Toni Morrison"), ("Things Fall Apart", "Chinua Achebe"), ("The Trial", "Franz Kafka"),
    ("Great Expectations", "Charles Dickens"), ("Jane Eyre", "Charlotte Bronte"),
    ("Wuthering Heights", "Emily Bronte"), ("Frankenstein", "Mary Shelley"), ("Dracula", "Bram Stoker"),
    ("The Hobbit", "J. R. R. Tolkien"), ("Hamlet", "William Shakespeare"), ("Madame Bovary", "Gustave Flaubert"),
    ("Les Miserables", "Victor Hugo"), ("The Divine Comedy", "Dante Alighieri"), ("Middlemarch", "George Eliot"),
    ("The Catcher in the Rye", "J. D. Salinger"), ("Brave New World", "Aldous Huxley"),
    ("The Handmaid's Tale", "Margaret Atwood"), ("Norwegian Wood", "Haruki Murakami"),
    ("The Name of the Rose", "Umberto Eco"), ("Anna Karenina", "Leo Tolstoy"), ("Lolita", "Vladimir Nabokov"),
    ("The Stranger", "Albert Camus"), ("Midnight's Children", "Salman Rushdie"), ("Ficciones", "Jorge Luis Borges"),
    ("The Little Prince", "Antoine de Saint-Exupery"), ("Siddhartha", "Hermann Hesse"),
]
BOOK_TEMPLATES = ["Who wrote {b}?", "What is {b} about?", "When was {b} first published?",
                  "What are the main themes of {b}?"]
AUTHOR_TEMPLATES = [
    "Where was {a} born?", "When was {a} born?", "What is {a} best known for?", "Tell me about {a}.",
    "What genre did {a} write in?", "What awards did {a} win?", "What did {a}'s parents do for a living?",
    "Which books did {a} write?", "How did {a} influence literature?", "What was {a}'s writing style like?",
    "Who were {a}'s biggest influences?", "What was {a}'s first novel?",
]
FAMOUS = ["Albert Einstein", "Marie Curie", "Isaac Newton", "Ada Lovelace", "Charles Darwin", "Nikola Tesla",
          "Leonardo da Vinci", "Wolfgang Amadeus Mozart", "Frida Kahlo", "Alan Turing", "Rosalind Franklin",
          "Ludwig van Beethoven", "Pablo Picasso", "Galileo Galilei", "Florence Nightingale", "Vincent van Gogh"]
FAMOUS_TEMPLATES = ["Who was {p}?", "What did {p} discover or create?", "Where did {p} grow up?",
                    "What is {p} famous for?", "When did {p} die?"]
GENERAL = [
    "Write a short poem about the sea.", "Translate 'good morning' into Spanish.",
    "Summarize the plot of a heist movie.",
    "Give me three tips for better sleep.", "What should I pack for a weekend hiking trip?",
    "How can I improve my public speaking?", "Write a polite email declining a meeting invitation.",
    "What is a good name for a golden retriever puppy?", "Explain compound interest to a child.",
    "How do I change a flat tyre?", "What are some good houseplants for low light?", "Tell me a joke about cats.",
    "How do I start learning the guitar?", "What is mindfulness meditation?", "Plan a three-day trip to Rome.",
    "How do I write a cover letter?", "What is the difference between weather and climate?",
    "Recommend a few board games for a family evening.", "How can I reduce my electricity bill?",
    "What are the benefits of drinking water?", "How do I get rid of fruit flies?", "Hello, how are you today?",
    "Can you help me plan a birthday party?", "What time zone is London in?", "How many ounces are in a pound?",
    "Convert 30 degrees Celsius to Fahrenheit.", "What is 17 times 23?", "What day of the week is it today?",
    "Describe the water cycle in simple terms.", "Why do cats purr?", "What is the tallest mountain in the world?",
    "What is the longest river in Africa?", "How do I remove a coffee stain from a shirt?",
    "What are good exercises for lower back pain?", "Write a haiku about autumn leaves.",
    "What is inflation and why does it matter?", "How do solar panels generate electricity?",
    "Suggest a weekly budget template.", "What is the best way to learn a new language?",
    "Who is the author of this quote: the only thing we have to fear is fear itself?",
]


def _sentences(text: str) -> Iterator[str]:
    """Split running prose into clean sentences of a useful length."""
    for raw in _SENTENCE_END.split(re.sub(r"\s+", " ", text)):
        s = raw.strip().lstrip(":;-").strip().strip("'\"")
        if 30 <= len(s) <= 240 and not _BAD_CHARS.search(s) and sum(c.isalpha() for c in s) > 0.7 * len(s):
            yield s


def _stable_sample(items: Iterable[str], limit: int) -> list[str]:
    """Deduplicate, then keep the ``limit`` items with the smallest content hash (order-free, deterministic)."""
    unique = sorted(set(items))
    unique.sort(key=lambda s: hashlib.blake2b(s.encode(), digest_size=8).digest())
    return sorted(unique[:limit])


def news_sentences(test_data: Path) -> list[str]:
    """Sentences from gensim's Lee news corpora."""
    out: list[str] = []
    for name in ("lee_background.cor", "lee.cor"):
        for line in (test_data / name).read_text(encoding="utf-8", errors="replace").splitlines():
            out.extend(_sentences(line))
    return _stable_sample(out, MAX_NEWS)


def wiki_sentences(test_data: Path) -> list[str]:
    """Plain-text sentences from gensim's shortened English Wikipedia dump."""
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    dump = test_data / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
    out: list[str] = []
    with bz2.BZ2File(dump) as handle:
        for _title, text, _pid in extract_pages(handle):
            plain = re.sub(r"'{2,}", "", filter_wiki(text))
            for para in plain.split("\n"):
                out.extend(_sentences(para))
    return _stable_sample(out, MAX_WIKI)


def generic_questions() -> list[str]:
    """Questions and requests on topics unrelated to any forget set (templated, deterministic)."""
    out = list(SCIENCE + COOKING + SPORTS + HISTORY + PROGRAMMING + GENERAL)
    out += [t.format(c=c, cap=cap) for c, cap in COUNTRIES for t in COUNTRY_TEMPLATES]
    out += [t.format(b=b) for b, _ in BOOKS for t in BOOK_TEMPLATES]
    out += [t.format(a=a) for a in sorted({a for _, a in BOOKS}) for t in AUTHOR_TEMPLATES]
    out += [t.format(p=p) for p in FAMOUS for t in FAMOUS_TEMPLATES]
    return sorted(set(out))


def main() -> None:
    """Write ``news.txt``, ``wiki.txt`` and ``questions.txt`` into the data folder."""
    import gensim

    test_data = Path(gensim.__file__).parent / "test" / "test_data"
    DATA_DIR.mkdir(exist_ok=True)
    for name, lines in (("news.txt", news_sentences(test_data)), ("wiki.txt", wiki_sentences(test_data)),
                        ("questions.txt", generic_questions())):
        (DATA_DIR / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"{name}: {len(lines)} lines")


if __name__ == "__main__":
    main()
