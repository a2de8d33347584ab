"""A deterministic, varied test corpus for the curation steps, in dolma's JSONL format.

`build_sample_corpus()` mixes real text with generated "web" text:

* real text, cut into pieces of varied length (a few words up to a few thousand): the KJV
  Bible, Shakespeare and Milton from `data/demo/train.jsonl.gz`, and the English prose of
  Python's own documentation (`pydoc_data.topics`, with code, grammar rules and braces);
* generated web pages built to trip each rule of the Gopher quality, Gopher repetition, C4
  and FineWeb filters some of the time: keyword spam, bullet lists, navigation and cookie
  boilerplate, lorem ipsum, repeated lines and paragraphs, hashtags, ellipses, number
  tables, very long words, Wikipedia citation markers, odd whitespace (tabs, runs of
  spaces, no-break and ideographic spaces, CRLF line endings), typographic punctuation and
  emoji, tokenizer exceptions ("cannot", "don't", "gonna", "10km", "U.S."), short and
  empty documents;
* planted near-duplicates (a copy of a base document with 1–10 % of its words substituted,
  deleted or inserted) and exact duplicates (the same text under another id), listed in
  `near_duplicate_pairs` and `exact_duplicate_pairs`, plus a few copies that differ from
  their base only in whitespace or letter case (`normalized_duplicate_pairs`).

Every random choice comes from `random.Random(seed)`: the same arguments give the same rows,
and `write_sample_corpus` writes byte-identical gzip files (no file name, `mtime=0`). The
pydoc part comes from the running Python's `pydoc_data`, so another Python version gives a
(slightly) different corpus.

Web documents carry `metadata.url`; a few URLs repeat, and some domains are obvious
blocklist candidates (see `SPAM_DOMAINS`).

Pieces of real text never overlap and no two originals have the same text, so the planted
pairs are the only duplicates (checked for seeds 0-2: no two originals share more than ~1/3
of their word 5-grams, planted near-duplicates share 0.38-0.96). That holds up to about 6,000
documents; beyond that the pydoc material runs out and is reused.

Sizes: with the defaults the median document has ~85 words (10 % under 35, 1 % over 300,
a few of 700 to 3,500), about 245k words in all. They are kept small because datatrove, the
peer the parity tests compare against, tokenizes with spaCy at only ~20-30k words/s.
"""

from __future__ import annotations

import gzip
import json
import math
import random
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

DEMO_CORPUS = Path(__file__).resolve().parents[1] / "data" / "demo" / "train.jsonl.gz"


@dataclass
class SampleCorpus:
    documents: list[dict]
    """The rows, in order: {"id", "text", "source"} and, for web pages, {"metadata": {"url"}}."""
    near_duplicate_pairs: list[tuple[str, str]]
    """(original id, planted near-duplicate id): the copy has 1–10 % of its words edited."""
    exact_duplicate_pairs: list[tuple[str, str]]
    """(original id, copy id): identical text."""
    normalized_duplicate_pairs: list[tuple[str, str]] = field(default_factory=list)
    """(original id, copy id): same words, only whitespace or letter case changed."""
    near_duplicate_edit_fraction: dict[str, float] = field(default_factory=dict)
    """Planted near-duplicate id → share of its base's words that were edited."""


# -- vocabularies for the generated web pages ---------------------------------------------------

SPAM_DOMAINS = ["cheap-pills-online.ru", "casino-bonus-777.biz", "free-movies-hd.xyz", "best-replica-watches.cn",
                "win-big-now.top", "seo-links-4u.info"]  # fmt: skip
DOMAINS = ["example.com", "news.example.org", "blog.example.net", "shop.example.co.uk", "forum.example.io",
           "en.wikipedia.org", "docs.example.dev", "travel-diary.example.com", "recipes.example.com",
           "cityguide.example.org", "techreview.example.net", "gardening.example.com", "sports.example.com",
           "music.example.fm", "health.example.org", "finance.example.com"]  # fmt: skip
ADJECTIVES = ("new best cheap small large modern classic simple quick easy free local popular fresh green quiet "
              "bright dark warm cold strong light heavy smart handmade organic vintage wireless portable "
              "affordable premium durable reliable friendly beautiful").split()
NOUNS = ("shoes garden kitchen laptop phone camera bicycle coffee recipe guide hotel beach museum library "
         "jacket backpack printer keyboard speaker headphones sofa lamp table chair window garage tent boat "
         "watch wallet charger battery router monitor blender kettle toaster mattress pillow candle notebook "
         "pencil guitar piano violin drone scooter stroller helmet").split()
CITIES = ("London Paris Berlin Madrid Rome Vienna Prague Dublin Lisbon Oslo Helsinki Warsaw Boston Denver "
          "Seattle Austin Chicago Toronto Sydney Melbourne Auckland Nairobi Lagos Cairo Mumbai Delhi Tokyo "
          "Osaka Seoul Manila Lima Quito Bogota").split()
NAMES = ("Alice Bob Carol David Emma Frank Grace Henry Irene Jack Kate Liam Maria Noah Olivia Peter Quinn "
         "Rachel Sam Tina Umar Vera Will Xenia Yusuf Zoe").split()
MONTHS = ("January February March April May June July August September October November December").split()
SUBJECTS = ["Our team", "The company", "This guide", "Many customers", "The city council", "Local residents",
            "The latest update", "Researchers at the university", "Our editors", "The author", "Most readers",
            "A spokesperson", "The new manager", "Several experts", "The review panel", "My neighbour",
            "The museum staff", "Volunteers from the club", "The design team", "Visitors"]  # fmt: skip
VERBS = ["has announced", "recommends", "explained", "reviewed", "tested", "compared", "discussed", "updated",
         "launched", "described", "praised", "criticised", "ordered", "returned", "repaired", "photographed",
         "measured", "shared", "planned", "organised"]  # fmt: skip
TAILS = ["in {city} last {month}", "for the coming season", "after {n} years of work", "with help from {name}",
         "before the end of the year", "during the summer festival", "at a press conference on Tuesday",
         "without any extra cost", "for families with small children", "despite the heavy rain",
         "as part of a wider plan", "on the main street of {city}", "together with {name} and {name2}",
         "in less than {n} minutes", "at the request of the readers"]  # fmt: skip
OPINIONS = ["I think it was worth every penny.", "Honestly, I would buy it again.",
            "It is not perfect, but it does the job.", "The staff were friendly and helpful.",
            "Delivery took longer than expected.", "We will definitely come back next year.",
            "The instructions were clear and easy to follow.", "Prices have gone up since last time.",
            "Parking can be difficult at weekends.", "The view from the top is amazing."]  # fmt: skip
LOREM = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et "
         "dolore magna aliqua enim ad minim veniam quis nostrud exercitation ullamco laboris nisi aliquip ex ea "
         "commodo consequat duis aute irure in reprehenderit voluptate velit esse cillum fugiat nulla pariatur "
         "excepteur sint occaecat cupidatat non proident sunt culpa qui officia deserunt mollit anim id est "
         "laborum curabitur pretium tincidunt lacus nulla gravida orci a odio nullam varius turpis").split()
SLANG = ["cannot", "don't", "gonna", "gotta", "wanna", "10km", "5kg", "U.S.", "e.g.", "i.e.", "etc.", "Mr.",
         "Dr.", "a.m.", "3pm", "$5.99", "£20", "50%", ":)", ";-)", "<3", "C++", "node.js", "info@example.com",
         "https://www.example.com/path?a=1&b=2", "@user", "y'all", "o'clock", "'cause", "ain't", "'em",
         "10,000", "1st", "2nd", "N.Y.", "Jan.", "vs.", "can't", "won't", "I'm", "you're", "it's", "let's",
         "Ph.D.", "St.", "No.", "lovin'", "doin'", "(see above)", "A/B", "24/7", "9:30", "1990s", "x2",
         "well-known", "e-mail", "COVID-19", "#1", "~50", "3.14", "-5", "+44", "w/", "b/c"]  # fmt: skip
CHAT = ["u", "r", "k", "ok", "ya", "lol", "gr8", "thx", "pls", "b4", "2", "4", "im", "so", "no", "yes", "ur",
        "idk", "omg", "hi", "yo", "i", "a", "is", "it", "go", "me", "we", "on", "do", "be", "at", "up", "an"]
NAV_ITEMS = ["Home", "About", "About Us", "Contact", "Blog", "Shop", "Services", "Products", "FAQ", "Login",
             "Register", "Search", "Careers", "Press", "Support", "Sitemap", "Newsletter", "Gallery", "Events"]
EMOJI = ["😀", "🎉", "👍", "🔥", "❤️", "🌍", "☕", "🚀", "😂", "✨", "🇬🇧", "👩‍💻"]
HASHTAGS = ("travel photography nature food foodie instagood photooftheday fitness motivation love fashion "
            "summer art beautiful happy cute style music sunset beach dog cat weekend coffee books").split()
CODE_SNIPPETS = [
    "function greet(name) {\n  return 'Hello, ' + name + '!';\n}",
    "for (let i = 0; i < items.length; i++) {\n  console.log(items[i]);\n}",
    "if (user.isLoggedIn()) {\n  showDashboard();\n} else {\n  redirect('/login');\n}",
    "const config = { debug: true, retries: 3 };",
    "def add(a, b):\n    return a + b",
    "SELECT name, price FROM products WHERE price < 100 ORDER BY price;",
    "body { margin: 0; padding: 0; font-family: sans-serif; }",
    "<script type=\"text/javascript\" src=\"/static/app.js\"></script>",
]  # fmt: skip
POLICY_LINES = [
    "This website uses cookies to improve your experience.",
    "We use cookies to personalise content and ads, and to analyse our traffic.",
    "By continuing to browse the site you agree to our use of cookies.",
    "Please read our Privacy Policy and Terms of Use before using this service.",
    "See our cookie policy for more information about how we use cookies.",
    "Your use of this website is subject to the terms of use set out below.",
    "Read our privacy policy to learn how we process your personal data.",
]  # fmt: skip
JS_LINES = [
    "Please enable JavaScript to view the comments powered by Disqus.",
    "You need to enable javascript to run this app.",
    "JavaScript is disabled in your browser, so some features will not work.",
    "This page requires Javascript to display the interactive map.",
]  # fmt: skip
FOOTERS = ["© {year} {site}. All rights reserved.", "Copyright {year} {site}", "Powered by WordPress",
           "Terms | Privacy | Cookies", "Back to top", "Follow us on Facebook, Twitter and Instagram",
           "Share this: Facebook Twitter Email", "Read more »", "Leave a comment", "Related posts"]


# -- real text ------------------------------------------------------------------------------------


@lru_cache(maxsize=2)
def _load_demo(path: str) -> dict[str, list[str]]:
    """The demo corpus's texts by source (kjv, shakespeare, milton), in file order."""
    by_source: dict[str, list[str]] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            by_source.setdefault(row["source"], []).append(row["text"])
    return by_source


@lru_cache(maxsize=1)
def _load_pydoc() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


def _target_words(rng: random.Random, long: int = 0) -> int:
    """How long a piece of real text should be: mostly under two hundred words, some short;
    `long` asks for one of the few long pieces (1: about a thousand words, 2: about three
    thousand) or (3) a piece long enough to be copied as a duplicate. datatrove's spaCy, the
    peer in the parity tests, reads only ~30k words/s."""
    if long == 1:
        return rng.randint(700, 1100)
    if long == 2:
        return rng.randint(2500, 3500)
    if long == 3:
        return rng.randint(100, 200)
    r = rng.random()
    if r < 0.28:
        return rng.randint(8, 45)
    if r < 0.93:
        return rng.randint(35, 100)
    return rng.randint(100, 260)


class _Cutter:
    """Hands out consecutive, non-overlapping pieces of a list of texts (split into units: lines
    or paragraphs), so no two pieces share text. Texts are visited in a seeded order."""

    def __init__(self, texts: list[str], rng: random.Random, sep: str, unique: bool = False):
        order = list(range(len(texts)))
        rng.shuffle(order)
        self.units = [u.strip("\n") if sep != "\n" else u for i in order for u in texts[i].split(sep)]
        if unique:  # pydoc's topics share whole sections: keep each paragraph once
            seen: set[str] = set()
            units = []
            for unit in self.units:
                if unit.strip() not in seen:
                    seen.add(unit.strip())
                    units.append(unit)
            self.units = units
        self.pos = 0

    def take(self, n_words: int) -> list[str]:
        out: list[str] = []
        count = 0
        while count < n_words:
            if self.pos >= len(self.units):
                self.pos = 0  # material exhausted (only for very large corpora): start over
            unit = self.units[self.pos]
            self.pos += 1
            if out or unit.strip():  # pieces start with text
                out.append(unit)
                count += len(unit.split())
        while not out[-1].strip():
            out.pop()
        return out


def _bible(rng: random.Random, verses: _Cutter, long: int = 0) -> str:
    units = verses.take(_target_words(rng, long))
    style = rng.random()
    if style < 0.4:
        return "\n".join(units)
    if style < 0.6:
        return " ".join(units)
    paragraphs, i = [], 0
    while i < len(units):
        k = rng.randint(1, 5)
        paragraphs.append(" ".join(units[i : i + k]))
        i += k
    text = "\n\n".join(paragraphs)
    if style > 0.9:
        text = f"Chapter {rng.randint(1, 50)}\n\n{text}"
    return text


def _lines_piece(rng: random.Random, lines: _Cutter, long: int = 0) -> str:
    return "\n".join(lines.take(_target_words(rng, long)))


def _pydoc(rng: random.Random, paragraphs: _Cutter, long: int = 0) -> str:
    return "\n\n".join(paragraphs.take(_target_words(rng, long)))


# -- generated web text ---------------------------------------------------------------------------


class _Web:
    """Generators for web-like pages. `prose` holds real sentences (KJV verses kept apart from the
    'bible' documents) to mix with template sentences, so pages are varied and unrelated."""

    def __init__(self, rng: random.Random, prose: _Cutter):
        self.rng = rng
        self.prose = prose
        self.n_empty = 0

    # small pieces
    def sentence(self) -> str:
        rng = self.rng
        if rng.random() < 0.2:
            return self.prose.take(1)[0]
        tail = rng.choice(TAILS).format(city=rng.choice(CITIES), month=rng.choice(MONTHS), n=rng.randint(2, 40),
                                        name=rng.choice(NAMES), name2=rng.choice(NAMES))  # fmt: skip
        thing = f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
        r = rng.random()
        if r < 0.6:
            return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} the {thing} {tail}."
        if r < 0.8:
            return rng.choice(OPINIONS)
        return f"Why is the {thing} so popular in {rng.choice(CITIES)}?"

    def paragraph(self, lo: int = 2, hi: int = 3) -> str:
        return " ".join(self.sentence() for _ in range(self.rng.randint(lo, hi)))

    def title(self) -> str:
        rng = self.rng
        forms = [f"The {rng.randint(3, 15)} Best {rng.choice(NOUNS).title()} in {rng.choice(CITIES)}",
                 f"How to Choose a {rng.choice(ADJECTIVES).title()} {rng.choice(NOUNS).title()}",
                 f"{rng.choice(CITIES)} Travel Guide {rng.randint(2015, 2024)}",
                 f"Review: {rng.choice(ADJECTIVES).title()} {rng.choice(NOUNS).title()} {rng.randint(100, 999)}",
                 f"Why I Stopped Buying {rng.choice(NOUNS).title()}"]  # fmt: skip
        return rng.choice(forms)

    def nav(self) -> str:
        items = self.rng.sample(NAV_ITEMS, self.rng.randint(3, 7))
        return self.rng.choice([" | ", " · ", "  ", " > "]).join(items)

    def footer(self, site: str) -> str:
        return self.rng.choice(FOOTERS).format(year=self.rng.randint(2005, 2024), site=site)

    def byline(self) -> str:
        rng = self.rng
        day, year = rng.randint(1, 28), rng.randint(2008, 2024)
        forms = [f"Posted by {rng.choice(NAMES)} on {rng.choice(MONTHS)} {day}, {year}",
                 f"Last updated: {rng.randint(2008, 2024)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                 f"By {rng.choice(NAMES)} {rng.choice(NAMES)}son | {rng.randint(2, 12)} min read"]  # fmt: skip
        return rng.choice(forms)

    def keyword(self, k: int) -> str:
        rng = self.rng
        words = [rng.choice(ADJECTIVES), rng.choice(NOUNS), rng.choice(["online", "sale", "deals", "shop", "store",
                 "discount", "review", "price", "uk", "usa", "near me", "free shipping"]), rng.choice(CITIES).lower(),
                 str(rng.randint(2015, 2024)), rng.choice(["buy", "order", "get", "find"])]  # fmt: skip
        return " ".join(words[:k])

    # page kinds: each returns a text
    def article(self) -> str:
        rng = self.rng
        site = rng.choice(DOMAINS)
        lines: list[str] = []
        if rng.random() < 0.5:
            lines.append(self.nav())
        lines.append(self.title())
        if rng.random() < 0.6:
            lines.append(self.byline())
        body = [self.paragraph() for _ in range(rng.randint(1, 3))]
        for extra, p in ((rng.choice(JS_LINES), 0.2), (rng.choice(POLICY_LINES), 0.3), (self.footer(site), 0.5),
                         (rng.choice(CODE_SNIPPETS), 0.05)):  # fmt: skip
            if rng.random() < p:
                body.insert(rng.randint(0, len(body)), extra)
        sep = rng.choice(["\n\n", "\n", "\n\n"])
        return "\n".join(lines) + "\n\n" + sep.join(body)

    def wiki(self) -> str:
        rng = self.rng
        topic = f"{rng.choice(CITIES)} {rng.choice(['Museum', 'Railway', 'Festival', 'University', 'Bridge'])}"
        out = [topic, "From Wikipedia, the free encyclopedia", ""]
        refs = 0
        for section in rng.sample(["History", "Geography", "Architecture", "Culture", "Economy", "Transport"],
                                  rng.randint(1, 3)):  # fmt: skip
            out.append(f"{section}[edit]" if rng.random() < 0.7 else section)
            for _ in range(rng.randint(1, 2)):
                sentences = []
                for _ in range(rng.randint(2, 4)):
                    s = self.sentence()
                    r = rng.random()
                    if r < 0.35:
                        refs += 1
                        s += f"[{refs}]"
                    elif r < 0.45:
                        s += "[citation needed]"
                    elif r < 0.5:
                        s += "[]"
                    sentences.append(s)
                out.append(" ".join(sentences))
            out.append("")
        if refs and rng.random() < 0.7:
            out.append("References[edit]")
            out.extend(f"^ {rng.choice(NAMES)} ({rng.randint(1950, 2020)}). A History of {topic}. p. {i * 7}."
                       for i in range(1, refs + 1))  # fmt: skip
        return "\n".join(out).strip()

    def spam(self) -> str:
        rng = self.rng
        r = rng.random()
        if r < 0.35:  # one keyword phrase stuffed among some filler: top n-gram rules
            phrase = self.keyword(rng.randint(2, 6))
            parts = [phrase.title()]
            for _ in range(rng.randint(5, 22)):
                parts.append(phrase if rng.random() < 0.6 else self.sentence())
            return rng.choice([" ", "\n", ". "]).join(parts)
        if r < 0.6:  # product word salad without stop words
            words = [rng.choice(ADJECTIVES + NOUNS + CITIES + ["Sale", "Discount", "Free", "Shipping", "Best",
                                                               "Price", "Cheap", "Online", "Buy", "Now"])
                     for _ in range(rng.randint(30, 110))]  # fmt: skip
            text = " ".join(w.title() if rng.random() < 0.4 else w for w in words)
            return text + rng.choice(["", ".", "!!!", " - Buy Now!"])
        if r < 0.8:  # a long sentence repeated inside running text: duplicated n-gram rules
            repeated = " ".join(self.sentence() for _ in range(rng.randint(1, 2)))
            parts = [self.sentence() for _ in range(rng.randint(4, 12))]
            for _ in range(rng.randint(1, 4)):
                parts.insert(rng.randint(0, len(parts)), repeated)
            return " ".join(parts)
        # several keyword phrases, one per line
        phrases = [self.keyword(rng.randint(3, 6)) for _ in range(rng.randint(2, 5))]
        return "\n".join(rng.choice(phrases) + rng.choice(["", ".", "!"]) for _ in range(rng.randint(12, 40)))

    def bullet_list(self) -> str:
        rng = self.rng
        bullet = rng.choice(["• ", "- ", "-", "  - ", "* ", "– ", "· ", "\u2022\t"])
        numbered = rng.random() < 0.1
        out = []
        n_head = rng.choices([0, 1, 2, 4], [4, 3, 2, 1])[0]
        if n_head:
            out.append(self.title())
            out.extend(self.paragraph(1, 2) for _ in range(n_head - 1))
        n_items = rng.randint(4, 18)
        long_items = rng.random() < 0.5
        for i in range(n_items):
            item = self.sentence() if long_items else self.keyword(rng.randint(2, 5)).capitalize()
            out.append(f"{i + 1}. {item}" if numbered else bullet + item)
        if rng.random() < 0.3:
            out.append(self.paragraph(1, 2))
        return ("\n\n" if rng.random() < 0.15 else "\n").join(out)

    def navigation(self) -> str:
        rng = self.rng
        site = rng.choice(DOMAINS)
        out = [self.nav() for _ in range(rng.randint(1, 3))]
        out += rng.sample(NAV_ITEMS, rng.randint(3, 10))
        if rng.random() < 0.6:
            out.append(self.title())
            out += [self.paragraph(1, 4) for _ in range(rng.randint(0, 4))]
        out += [self.footer(site) for _ in range(rng.randint(1, 4))]
        if rng.random() < 0.5:
            out += rng.sample(POLICY_LINES, 2)
        if rng.random() < 0.3:
            out.append(rng.choice(JS_LINES))
        out += [self.nav()] * rng.randint(1, 3)
        return "\n".join(out)

    def lorem(self) -> str:
        rng = self.rng
        if rng.random() < 0.5:  # a real-looking page with a placeholder left in
            body = [self.paragraph() for _ in range(rng.randint(2, 4))]
            body.insert(rng.randint(0, len(body)), rng.choice([
                "Lorem ipsum dolor sit amet, consectetur adipiscing elit.",
                "Lorem Ipsum is simply dummy text of the printing industry.",
                "Placeholder: lorem ipsum dolor sit amet",
                "LOREM IPSUM DOLOR SIT AMET, SED DO EIUSMOD TEMPOR."]))  # fmt: skip
            return self.title() + "\n\n" + "\n\n".join(body)
        paras = []
        for _ in range(rng.randint(1, 5)):
            sents = []
            for _ in range(rng.randint(2, 7)):
                s = " ".join(rng.choice(LOREM) for _ in range(rng.randint(5, 16)))
                sents.append(s.capitalize() + ".")
            paras.append(" ".join(sents))
        if rng.random() < 0.7:
            paras[0] = "Lorem ipsum dolor sit amet, " + paras[0][0].lower() + paras[0][1:]
        return "\n\n".join(paras)

    def repeated(self) -> str:
        rng = self.rng
        r = rng.random()
        if r < 0.2:  # many repeated paragraphs
            distinct = [self.paragraph(1, 3) for _ in range(rng.randint(2, 3))]
            paras = [rng.choice(distinct) for _ in range(rng.randint(4, 8))]
            return "\n\n".join(paras)
        if r < 0.4:  # one long paragraph duplicated among several
            paras = [self.paragraph(1, 2) for _ in range(rng.randint(3, 6))]
            long = self.paragraph(3, 4)
            paras.insert(rng.randint(0, len(paras)), long)
            paras.insert(rng.randint(0, len(paras)), long)
            return "\n\n".join(paras)
        if r < 0.6:  # repeated short lines within one block (a chorus, a menu)
            chorus = [self.sentence() for _ in range(rng.randint(1, 3))]
            lines = []
            for _ in range(rng.randint(6, 14)):
                lines.append(rng.choice(chorus) if rng.random() < 0.4 else self.sentence())
            return "\n".join(lines)
        if r < 0.8:  # one long line repeated once
            lines = [self.sentence() for _ in range(rng.randint(4, 9))]
            long = self.paragraph(3, 4)
            lines.insert(rng.randint(0, len(lines)), long)
            lines.insert(rng.randint(0, len(lines)), long)
            return "\n".join(lines)
        # a song: verses with a repeated chorus block
        chorus = "\n".join(self.sentence() for _ in range(rng.randint(2, 4)))
        blocks = []
        for _ in range(rng.randint(2, 4)):
            blocks.append("\n".join(self.sentence() for _ in range(rng.randint(2, 4))))
            blocks.append(chorus)
        return "\n\n".join(blocks)

    def hashtags(self) -> str:
        rng = self.rng
        posts = []
        for _ in range(rng.randint(1, 6)):
            text = self.sentence() if rng.random() < 0.7 else self.paragraph(1, 3)
            n_tags = rng.choices([0, 2, 5, 12, 25], [2, 3, 3, 3, 2])[0]
            tags = " ".join("#" + rng.choice(HASHTAGS) for _ in range(n_tags))
            if rng.random() < 0.3:
                tags += " " + rng.choice(EMOJI)
            posts.append(f"{text} {tags}".strip())
        return "\n\n".join(posts)

    def ellipsis(self) -> str:
        rng = self.rng
        mark = lambda: rng.choice(["...", "…", "....", ". . ."])  # noqa: E731
        if rng.random() < 0.4:  # choppy forum post
            frags = []
            for _ in range(rng.randint(10, 40)):
                frag = " ".join(rng.choice(CHAT + HASHTAGS + NOUNS) for _ in range(rng.randint(1, 6)))
                frags.append(frag + (mark() if rng.random() < 0.6 else ""))
            return " ".join(frags)
        lines = []  # long lines, a share of them trailing off
        share = rng.uniform(0.0, 0.8)
        for _ in range(rng.randint(4, 10)):
            s = self.paragraph(1, 2)
            if rng.random() < share:
                s = s.rstrip(".!?") + mark()
            lines.append(s)
        return "\n".join(lines)

    def table(self) -> str:
        rng = self.rng
        sep = rng.choice([" | ", "\t", "  ", ", ", " "])
        cols = rng.randint(2, 7)
        out = []
        if rng.random() < 0.7:
            out.append(self.title())
        if rng.random() < 0.5:
            out.append(self.paragraph(1, 3))
        header = [rng.choice(["Year", "Revenue", "Profit", "Score", "Team", "Price", "Change", "Volume", "Rank"])
                  for _ in range(cols)]  # fmt: skip
        out.append(sep.join(header))
        for _ in range(rng.randint(5, 25)):
            row = []
            for c in range(cols):
                kind = rng.random()
                if c == 0 and rng.random() < 0.3:
                    row.append(rng.choice(CITIES))
                elif kind < 0.4:
                    row.append(str(rng.randint(0, 9999)))
                elif kind < 0.7:
                    row.append(f"{rng.uniform(-100, 100):.2f}")
                elif kind < 0.85:
                    row.append(f"{rng.randint(0, 100)}%")
                else:
                    row.append(rng.choice(["-", "n/a", "—", "$" + str(rng.randint(1, 500)), "+3", "x"]))
            out.append(sep.join(row))
        if rng.random() < 0.4:
            out.append(self.paragraph(1, 4))
        return "\n".join(out)

    def long_words(self) -> str:
        rng = self.rng
        r = rng.random()
        if r < 0.5:  # a page with an embedded blob (base64 image, tracking URL)
            alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
            blob = "".join(rng.choice(alphabet) for _ in range(rng.choice([200, 800, 999, 1000, 1001, 1500, 3000])))
            blob = rng.choice(["data:image/png;base64,", "https://tracker.example.com/?id=", ""]) + blob
            body = [self.paragraph() for _ in range(rng.randint(2, 4))]
            body.insert(rng.randint(0, len(body)), rng.choice([blob, f"Image: {blob} (click to enlarge).", blob + "."]))
            return "\n".join(body)
        if r < 0.8:  # a list of URLs
            return "\n".join(f"https://www.{rng.choice(DOMAINS)}/{rng.choice(NOUNS)}/{rng.randint(1000, 99999)}"
                             f"/{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}-{rng.choice(CITIES).lower()}.html"
                             for _ in range(rng.randint(15, 40)))  # fmt: skip
        long = ["internationalization", "characteristically", "telecommunications", "incomprehensibilities",
                "counterrevolutionaries", "electroencephalography", "Donaudampfschifffahrtsgesellschaft",
                "Rechtsschutzversicherungsgesellschaften", "pneumonoultramicroscopicsilicovolcanoconiosis",
                "antidisestablishmentarianism", "uncharacteristically", "Kraftfahrzeughaftpflichtversicherung"]
        words = [rng.choice(long) if rng.random() < 0.7 else rng.choice(["the", "and", "of", "with", "to"])
                 for _ in range(rng.randint(50, 90))]  # fmt: skip
        return " ".join(words) + "."

    def chat(self) -> str:
        rng = self.rng
        lines = []
        for _ in range(rng.randint(6, 25)):
            who = rng.choice(NAMES).lower()
            msg = " ".join(rng.choice(CHAT) for _ in range(rng.randint(2, 9)))
            lines.append(f"{who}: {msg}{rng.choice(['', '', '?', '!', ' :)', '.'])}")
        return "\n".join(lines)

    def whitespace(self) -> str:
        rng = self.rng
        spaces = ["  ", "   ", "\t", " \t ", "\u00a0", "\u2009", "\u3000", "\u200b", " \u00a0 "]
        out = []
        for _ in range(rng.randint(3, 8)):
            words = self.paragraph(1, 2).split(" ")
            line = ""
            for w in words:
                line += (rng.choice(spaces) if rng.random() < 0.25 else " ") + w
            if rng.random() < 0.3:
                line = rng.choice(["    ", "\t", "\t\t", "  "]) + line
            if rng.random() < 0.3:
                line += rng.choice(["  ", "\t", " \u00a0"])
            out.append(line)
            if rng.random() < 0.2:
                out.append(rng.choice(["", "   ", "\t", " \t "]))
        sep = rng.choice(["\n", "\n\n", "\n \n", "\n\x0c\n", "\u2028", "\n\n\n"])
        return sep.join(out)

    def unicode(self) -> str:
        rng = self.rng
        out = []
        for _ in range(rng.randint(3, 10)):
            s = self.sentence().replace("'", "’")
            r = rng.random()
            if r < 0.25:
                s = f"“{s}” she said — then left…"
            elif r < 0.4:
                s = f"«{s}» – {rng.choice(NAMES)}"
            elif r < 0.5:
                s = f"{s} {rng.choice(EMOJI)}{rng.choice(EMOJI)}"
            elif r < 0.6:
                s = f"„{s.rstrip('.')}“ {rng.choice(['！', '。', '？', '‼', '⁉', '؟', '।'])}"
            elif r < 0.7:
                s = f"Café, naïve, coöperate, façade: {s}"
            elif r < 0.8:
                s = f"{s}（{rng.randint(1, 99)}％）：{rng.choice(['【注】', '「引用」', '〈例〉', '《書》'])}"
            out.append(s)
        return rng.choice(["\n", "\n\n", " "]).join(out)

    def slang(self) -> str:
        rng = self.rng
        out = []
        for _ in range(rng.randint(2, 8)):
            words = self.sentence().split(" ")
            for _ in range(rng.randint(1, 5)):
                words.insert(rng.randint(0, len(words)), rng.choice(SLANG))
            out.append(" ".join(words))
        return rng.choice(["\n", "\n\n", " "]).join(out)

    def short(self) -> str:
        rng = self.rng
        forms = [lambda: self.sentence(), lambda: self.title(), lambda: "404 Not Found",
                 lambda: f"{self.keyword(3).title()} - {rng.choice(DOMAINS)}", lambda: self.paragraph(1, 3),
                 lambda: f"{self.title()}\n{self.byline()}\n{self.sentence()}", lambda: rng.choice(OPINIONS),
                 lambda: f"Page {rng.randint(1, 40)} of {rng.randint(40, 90)}",
                 lambda: " ".join(rng.choice(SLANG) for _ in range(rng.randint(3, 12)))]  # fmt: skip
        return rng.choice(forms)()

    def empty(self) -> str:
        self.n_empty += 1
        if self.n_empty == 1:
            return ""  # the one truly empty text (texts are unique)
        return "".join(self.rng.choice(["", " ", "\n", "\t", "\r\n", "\u3000"]) for _ in range(self.rng.randint(1, 6)))

    def crlf(self) -> str:
        text = self.article() if self.rng.random() < 0.6 else self.bullet_list()
        return text.replace("\n", "\r\n")

    def code(self) -> str:
        rng = self.rng
        out = [self.title(), self.paragraph(1, 3)]
        for _ in range(rng.randint(1, 4)):
            out.append(rng.choice(CODE_SNIPPETS))
            out.append(self.paragraph(1, 3))
        if rng.random() < 0.4:
            out.append(f"Use the placeholder {{name}} in the template, for example {{{rng.choice(NOUNS)}}}.")
        return "\n\n".join(out)

    def policy(self) -> str:
        rng = self.rng
        out = [rng.choice(["Privacy Policy", "Cookie Policy", "Terms of Use", "Legal notice"])]
        for _ in range(rng.randint(3, 12)):
            r = rng.random()
            if r < 0.25:
                out.append(rng.choice(POLICY_LINES))
            elif r < 0.6:
                phrase = rng.choice(["privacy policy", "Terms of Use", "cookie policy", "use of cookies"])
                out.append(f"{self.sentence().rstrip('.?!')}, as described in our {phrase}.")
            else:
                out.append(self.sentence())
        return "\n".join(out)

    def spaced(self) -> str:
        rng = self.rng
        out = []
        for _ in range(rng.randint(5, 25)):
            words = self.sentence().split(" ")
            out.append(" ".join(words[: rng.randint(3, 9)]).rstrip(",;:") + rng.choice([".", ".", "!", "", "?"]))
        return rng.choice(["\n\n", "\n\n\n", "\n\n", "\n"]).join(out)


# -- assembling the corpus -------------------------------------------------------------------------

# (source, weight): shares of the documents before duplicates are planted
KINDS: list[tuple[str, float]] = [
    ("bible", 20), ("shakespeare", 11), ("milton", 4), ("pydoc", 8),
    ("web-article", 12), ("web-wiki", 4), ("web-spam", 4), ("web-list", 4), ("web-nav", 3), ("web-lorem", 2),
    ("web-repeat", 4), ("web-hashtag", 2), ("web-ellipsis", 2.5), ("web-table", 2), ("web-longword", 1.5),
    ("web-chat", 1), ("web-whitespace", 2), ("web-unicode", 2), ("web-slang", 2), ("web-short", 3),
    ("web-empty", 0.3), ("web-crlf", 1.5), ("web-code", 1.5), ("web-policy", 1), ("web-spaced", 1.5),
]  # fmt: skip


def _allocate(n: int, weights: list[tuple[str, float]]) -> list[tuple[str, int]]:
    """Split n into integer counts proportional to the weights (largest remainders)."""
    total = sum(w for _, w in weights)
    exact = [(name, n * w / total) for name, w in weights]
    counts = {name: int(x) for name, x in exact}
    left = n - sum(counts.values())
    for name, _ in sorted(exact, key=lambda t: (-(t[1] - int(t[1])), t[0]))[:left]:
        counts[name] += 1
    return [(name, counts[name]) for name, _ in weights]


def _url(rng: random.Random, source: str, urls: list[str]) -> str:
    if urls and rng.random() < 0.03:
        return rng.choice(urls)  # a page crawled twice
    domain = rng.choice(SPAM_DOMAINS) if source == "web-spam" and rng.random() < 0.6 else rng.choice(
        SPAM_DOMAINS + DOMAINS * 6)  # fmt: skip
    path = "/".join(rng.choice(NOUNS + ADJECTIVES) for _ in range(rng.randint(1, 3)))
    url = f"{rng.choice(['https', 'http'])}://{domain}/{path}-{rng.randint(1, 99999)}"
    if rng.random() < 0.2:
        url += rng.choice(["?ref=home", ".html", "/", "#comments"])
    return url


_WORD = re.compile(r"\S+")


def _near_duplicate(text: str, rng: random.Random, vocab: list[str]) -> tuple[str, float]:
    """`text` with 1–10 % of its words substituted, deleted or inserted; whitespace kept."""
    spans = [m.span() for m in _WORD.finditer(text)]
    n_edits = rng.randint(max(1, math.ceil(0.01 * len(spans))), max(1, len(spans) // 10))
    edits = {i: rng.choice("sdi") for i in rng.sample(range(len(spans)), n_edits)}
    out, prev = [], 0
    for i, (a, b) in enumerate(spans):
        out.append(text[prev:a])
        op = edits.get(i)
        word = text[a:b]
        if op == "s":
            out.append(rng.choice([w for w in rng.sample(vocab, 3) if w != word] or ["edited"]))
        elif op == "i":
            out.append(f"{rng.choice(vocab)} {word}")
        elif op != "d":
            out.append(word)
        prev = b
    out.append(text[prev:])
    return "".join(out), n_edits / len(spans)


def _normalized_variant(text: str, rng: random.Random) -> str:
    """Same words, different letter case or whitespace."""
    r = rng.random()
    if r < 0.35:
        return text.lower()
    if r < 0.5:
        return text.upper()
    if r < 0.75:
        return re.sub(r" ", "  ", text)
    return "  " + text.replace("\n", " \n") + "\n"


def build_sample_corpus(
    n_docs: int = 2400,
    seed: int = 0,
    near_duplicates: int = 200,
    exact_duplicates: int = 50,
    *,
    demo_path: str | Path | None = None,
) -> SampleCorpus:
    """`n_docs` documents in all. Of these, `near_duplicates` are near-duplicate copies,
    `exact_duplicates` exact copies and `exact_duplicates // 10` copies that differ from their
    base only in case or whitespace; the rest are originals, all with distinct texts."""
    n_normalized = exact_duplicates // 10
    n_base = n_docs - near_duplicates - exact_duplicates - n_normalized
    if near_duplicates < 0 or exact_duplicates < 0 or n_base < 1:
        raise ValueError(f"n_docs={n_docs} leaves no room for {near_duplicates} near and "
                         f"{exact_duplicates + n_normalized} exact duplicates")  # fmt: skip
    rng = random.Random(seed)
    demo = _load_demo(str(demo_path or DEMO_CORPUS))

    # KJV chapters: the first ~60 % (in a seeded order) for 'bible' documents, the rest as prose for web pages
    chapters = list(demo["kjv"])
    rng.shuffle(chapters)
    cut = len(chapters) * 3 // 5
    verses = _Cutter(chapters[:cut], rng, "\n")
    web = _Web(rng, _Cutter(chapters[cut:], rng, "\n"))
    shakespeare = _Cutter(demo["shakespeare"], rng, "\n")
    milton = _Cutter(demo["milton"], rng, "\n")
    pydoc = _Cutter(_load_pydoc(), rng, "\n\n", unique=True)

    makers = {
        "bible": lambda: _bible(rng, verses, long),
        "shakespeare": lambda: _lines_piece(rng, shakespeare, long),
        "milton": lambda: _lines_piece(rng, milton, long),
        "pydoc": lambda: _pydoc(rng, pydoc, long),
        "web-article": web.article, "web-wiki": web.wiki, "web-spam": web.spam, "web-list": web.bullet_list,
        "web-nav": web.navigation, "web-lorem": web.lorem, "web-repeat": web.repeated, "web-hashtag": web.hashtags,
        "web-ellipsis": web.ellipsis, "web-table": web.table, "web-longword": web.long_words, "web-chat": web.chat,
        "web-whitespace": web.whitespace, "web-unicode": web.unicode, "web-slang": web.slang, "web-short": web.short,
        "web-empty": web.empty, "web-crlf": web.crlf, "web-code": web.code, "web-policy": web.policy,
        "web-spaced": web.spaced,
    }  # fmt: skip
    urls: list[str] = []
    rows: list[dict] = []
    texts: set[str] = set()  # no accidental exact duplicates: the planted ones are the only ones
    n_long = 0
    long = 0
    for source, count in _allocate(n_base, KINDS):
        for i in range(count):
            # one in 80 KJV/Shakespeare/Milton pieces is long, every third of those very long
            long = 0
            if source in ("bible", "shakespeare", "milton") and i % 80 == 40:
                n_long += 1
                long = 2 if n_long % 3 == 1 else 1
            text = makers[source]()
            for _ in range(50):
                if text not in texts:
                    break
                text = makers[source]()
            texts.add(text)
            row: dict = {"text": text, "source": source}
            if source.startswith("web-"):
                row["metadata"] = {"url": _url(rng, source, urls)}
                urls.append(row["metadata"]["url"])
            rows.append(row)

    # planted copies: bases are distinct documents of 100 to 250 words
    eligible = [i for i, r in enumerate(rows) if 100 <= len(r["text"].split()) <= 250]
    n_copies = near_duplicates + exact_duplicates + n_normalized
    if len(eligible) < n_copies:  # many copies asked for: lengthen short real-text originals
        long = 3
        for i, row in enumerate(rows):
            if len(eligible) >= n_copies:
                break
            if row["source"] in ("bible", "shakespeare", "milton", "pydoc") and len(row["text"].split()) < 100:
                text = makers[row["source"]]()
                if text not in texts and len(text.split()) >= 100:
                    texts.add(text)
                    row["text"] = text
                    eligible.append(i)
        eligible.sort()
    if len(eligible) < n_copies:
        raise ValueError(f"only {len(eligible)} documents of 100+ words to copy, {n_copies} copies asked for")
    bases = rng.sample(eligible, n_copies)
    vocab = sorted({w for i in rng.sample(range(len(rows)), min(200, len(rows))) for w in rows[i]["text"].split()})
    planted: list[tuple[str, int, dict]] = []  # (kind, base row index, copy row)
    edit_fraction: dict[int, float] = {}
    for k, base in enumerate(bases):
        copy = dict(rows[base])
        if "metadata" in copy:
            copy["metadata"] = {"url": _url(rng, copy["source"], urls)}
        if k < near_duplicates:
            kind = "near"
            while copy["text"] == rows[base]["text"]:  # (edits that cancel out: a redo, almost never)
                copy["text"], fraction = _near_duplicate(rows[base]["text"], rng, vocab)
            edit_fraction[len(rows) + k] = fraction
        elif k < near_duplicates + exact_duplicates:
            kind = "exact"
        else:
            kind = "normalized"
            copy["text"] = _normalized_variant(copy["text"], rng)
            if copy["text"] == rows[base]["text"]:  # e.g. lower-casing a lower-case text
                copy["text"] = f"  {copy['text']}\n"
        planted.append((kind, base, copy))
    rows.extend(copy for _, _, copy in planted)

    # shuffle, then name documents by source and final position
    order = list(range(len(rows)))
    rng.shuffle(order)
    ids: dict[int, str] = {}
    documents = []
    for position, i in enumerate(order):
        row = rows[i]
        ids[i] = f"{row['source']}-{position:05d}"
        doc = {"id": ids[i], "text": row["text"], "source": row["source"]}
        if "metadata" in row:
            doc["metadata"] = row["metadata"]
        documents.append(doc)
    first_copy = n_base
    pairs: dict[str, list[tuple[str, str]]] = {"near": [], "exact": [], "normalized": []}
    for k, (kind, base, _) in enumerate(planted):
        pairs[kind].append((ids[base], ids[first_copy + k]))
    return SampleCorpus(
        documents=documents,
        near_duplicate_pairs=pairs["near"],
        exact_duplicate_pairs=pairs["exact"],
        normalized_duplicate_pairs=pairs["normalized"],
        near_duplicate_edit_fraction={ids[i]: f for i, f in edit_fraction.items()},
    )


def _json_line(doc: dict) -> str:
    line = json.dumps(doc, ensure_ascii=False)
    # keep each document on one physical line for readers that split on Unicode line breaks
    return line.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").replace("\x85", "\\u0085") + "\n"


def write_sample_corpus(corpus: SampleCorpus, folder: Path, n_files: int = 8) -> list[Path]:
    """Write the documents as `shard-00000.jsonl.gz` … in `folder`, in contiguous blocks (reading
    the shards in name order gives the documents in order). Same corpus, same bytes."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    docs = corpus.documents
    n_files = max(1, min(n_files, len(docs)))
    paths = []
    for k in range(n_files):
        block = docs[k * len(docs) // n_files : (k + 1) * len(docs) // n_files]
        path = folder / f"shard-{k:05d}.jsonl.gz"
        with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as f:
            f.write("".join(map(_json_line, block)).encode("utf-8"))
        paths.append(path)
    return paths
