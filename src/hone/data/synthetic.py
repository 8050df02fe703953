"""A small SQuAD 2.0-style dataset generated on the spot, for the demo and CLI tests.

Each paragraph states a few facts about an invented town; questions ask for some of
them, and about a third ask for facts the paragraph never states (unanswerable).
Invented names keep a pretrained model from answering from memory: it has to read.
"""

from __future__ import annotations

import random

_SYLLABLES = ["ka", "lo", "mir", "zen", "tar", "vel", "dra", "nor", "sil", "quen", "bra", "eth", "fal", "gor"]
_FIRST = ["Amelia", "Tomas", "Ingrid", "Rafael", "Helena", "Oskar", "Mirela", "Jonas", "Leona", "Victor"]
_LAST = ["Brandt", "Okafor", "Lindqvist", "Moreau", "Castell", "Novak", "Haddad", "Ferreira", "Kowal", "Adler"]
_INDUSTRIES = ["shipbuilding", "wine making", "copper mining", "textiles", "glassblowing", "fishing", "pottery"]
_RIVERS = ["Arlen", "Vesk", "Morrow", "Tilda", "Oster", "Caldor", "Brine"]
_TEAMS = ["football", "rowing", "chess", "cycling", "basketball", "fencing"]

# fact key -> (sentence template, question template); {town} is the subject.
_FACTS = {
    "founder": ("{town} was founded by {value}.", "Who founded {town}?"),
    "year": ("The town was established in {value}.", "In what year was {town} established?"),
    "industry": ("Its main industry is {value}.", "What is the main industry of {town}?"),
    "river": ("The river {value} flows through the old quarter.", "Which river flows through {town}?"),
    "population": ("About {value} people live there today.", "How many people live in {town}?"),
    "sport": ("Locals are proud of their {value} club.", "What kind of club are the people of {town} proud of?"),
}


def _value(key: str, rng: random.Random) -> str:
    if key == "founder":
        return f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
    if key == "year":
        return str(rng.randint(1100, 1950))
    if key == "industry":
        return rng.choice(_INDUSTRIES)
    if key == "river":
        return rng.choice(_RIVERS)
    if key == "population":
        return f"{rng.randint(2, 95)},{rng.randint(0, 999):03d}"
    return rng.choice(_TEAMS)


def _town(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def make_synthetic_squad(num_paragraphs: int, seed: int = 0) -> dict:
    """Return a SQuAD 2.0 JSON dict: `num_paragraphs` paragraphs, 3 questions each, 1 unanswerable."""
    rng = random.Random(seed)
    paragraphs = []
    for p in range(num_paragraphs):
        town = _town(rng)
        keys = list(_FACTS)
        rng.shuffle(keys)
        stated, missing = keys[:4], keys[4:]
        values = {k: _value(k, rng) for k in stated}
        sentences = [f"{town} is a small town in the valley of {rng.choice(_RIVERS)}land."]
        sentences += [_FACTS[k][0].format(town=town, value=values[k]) for k in stated]
        context = " ".join(sentences)
        qas = []
        for q, key in enumerate(rng.sample(stated, 2)):
            lead = _FACTS[key][0].split("{")[0]  # text before the value, to find the right occurrence
            start = context.index(values[key], context.index(lead))
            qas.append({"id": f"syn-{seed}-{p}-{q}", "question": _FACTS[key][1].format(town=town),
                        "answers": [{"text": values[key], "answer_start": start}], "is_impossible": False})
        # Unanswerable: a fact the paragraph never states, or a stated fact about another town.
        if rng.random() < 0.5:
            question = _FACTS[rng.choice(missing)][1].format(town=town)
        else:
            question = _FACTS[rng.choice(stated)][1].format(town=_town(rng))
        qas.append({"id": f"syn-{seed}-{p}-2", "question": question, "answers": [], "is_impossible": True})
        paragraphs.append({"context": context, "qas": qas})
    return {"version": "v2.0", "data": [{"title": "Synthetic towns", "paragraphs": paragraphs}]}
