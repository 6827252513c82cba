"""Passages about invented entities (towns, inventors, companies, rivers) with verbatim-answer questions:
facts a model cannot know before it reads them."""

from __future__ import annotations

import random

_SYLLABLES = (
    "ba bel dor fen gal hir ka lim mor nes ol pra quin ros sul tam ur vel wen yar zo "
    "bri cas dru eth fal gor hal ist jor kel lun mav nor pel rud sav tor ulm vor zan"
).split()
_EXPORTS = ["copper wire", "woollen blankets", "glass beads", "dried figs", "clay pipes", "rope", "salted fish"]
_PRODUCTS = ["bicycle bells", "weather vanes", "pocket compasses", "ceramic tiles", "water pumps", "sewing machines"]
_FIELDS = ["astronomy", "metallurgy", "botany", "hydraulics", "acoustics", "cartography"]
_PURPOSES = ["measuring rainfall", "sorting seeds", "cooling bread", "splitting slate", "winding clocks", "drying ink"]
_PROFESSIONS = ["glassblower", "schoolteacher", "ship captain", "botanist", "bookbinder", "surveyor"]
_MONTHS = ["January", "March", "May", "July", "September", "November"]
_COLOURS = ["green", "orange", "silver", "violet", "crimson", "yellow"]
_ANIMALS = ["heron", "fox", "beetle", "otter", "lynx", "sparrow"]
_CARGO = ["timber", "grain", "limestone", "wine barrels", "coal", "wool"]

Fact = tuple[str, list[tuple[str, str]]]  # (sentence, [(question, answer span), ...])


class _Names:
    """Invented names, never repeated within one generator."""

    def __init__(self, rng: random.Random) -> None:
        self.rng, self.used = rng, set()

    def __call__(self) -> str:
        while True:
            name = "".join(self.rng.choices(_SYLLABLES, k=self.rng.choice([2, 2, 3]))).capitalize()
            if name not in self.used:
                self.used.add(name)
                return name

    def person(self) -> str:
        return f"{self()} {self()}"


def _town(rng: random.Random, name: _Names) -> tuple[str, list[Fact]]:
    town, river, founder, mayor, city, festival, dish, tower = (name() for _ in range(8))
    founder, mayor = f"{founder} {name()}", f"{mayor} {name()}"
    year, elected, built = rng.randint(1100, 1599), rng.randint(1960, 2019), rng.randint(1700, 1899)
    population = f"{rng.randint(1_200, 98_000):,}"
    export, month = rng.choice(_EXPORTS), rng.choice(_MONTHS)
    return town, [
        (
            f"{town} is a town on the banks of the {river} River, founded in {year} by {founder}.",
            [
                (f"In what year was {town} founded?", str(year)),
                (f"Who founded the town of {town}?", founder),
                (f"On which river does {town} lie?", f"{river} River"),
            ],
        ),
        (
            f"Its population was {population} at the last census.",
            [(f"What was the population of {town} at the last census?", population)],
        ),
        (
            f"The town's main export is {export}, shipped mostly to {city}.",
            [(f"What is the main export of {town}?", export), (f"Where are most exports of {town} shipped?", city)],
        ),
        (
            f"Every {month}, {town} holds the {festival} Festival.",
            [(f"In which month does {town} hold the {festival} Festival?", month)],
        ),
        (
            f"The mayor of {town} is {mayor}, who was elected in {elected}.",
            [(f"Who is the mayor of {town}?", mayor), (f"In what year was the mayor of {town} elected?", str(elected))],
        ),
        (f"Local cooks are proud of {dish}, a slow-cooked stew.", [(f"What stew is {town} known for?", dish)]),
        (
            f"The tallest building in {town} is the {tower} Tower, completed in {built}.",
            [(f"What is the tallest building in {town}?", f"{tower} Tower")],
        ),
    ]


def _inventor(rng: random.Random, name: _Names) -> tuple[str, list[Fact]]:
    first, last = name(), name()
    person, town, academy, company, spouse, city = f"{first} {last}", name(), name(), name(), name.person(), name()
    invention = f"{name()} {rng.choice(['engine', 'loom', 'lamp', 'press', 'valve'])}"
    born, founded, died = rng.randint(1700, 1850), rng.randint(1870, 1890), rng.randint(1900, 1930)
    field, purpose, profession = rng.choice(_FIELDS), rng.choice(_PURPOSES), rng.choice(_PROFESSIONS)
    return person, [
        (
            f"{person} was an inventor born in {born} in the town of {town}.",
            [(f"In what year was {person} born?", str(born)), (f"In which town was {person} born?", town)],
        ),
        (
            f"{last} is best known for inventing the {invention}, a device for {purpose}.",
            [
                (f"What is {person} best known for inventing?", invention),
                (f"What is the {invention} used for?", purpose),
            ],
        ),
        (
            f"{last} studied {field} at the {academy} Academy.",
            [(f"What did {person} study?", field), (f"At which academy did {person} study?", f"{academy} Academy")],
        ),
        (
            f"In {founded}, {last} founded a workshop called {company}.",
            [(f"What was the name of the workshop founded by {person}?", company)],
        ),
        (
            f"{last} married {spouse}, a {profession}.",
            [(f"Whom did {person} marry?", spouse), (f"What was the profession of {person}'s spouse?", profession)],
        ),
        (f"{last} died in {died} in {city}.", [(f"In which city did {person} die?", city)]),
    ]


def _company(rng: random.Random, name: _Names) -> tuple[str, list[Fact]]:
    company, founder, city, building, brand, ceo = name(), name.person(), name(), name(), name(), name.person()
    company = f"{company} {rng.choice(['Works', 'Industries', 'and Sons', 'Trading'])}"
    year, released = rng.randint(1850, 1950), rng.randint(1960, 2015)
    employees = f"{rng.randint(40, 9_000):,}"
    product, logo = rng.choice(_PRODUCTS), f"{rng.choice(_COLOURS)} {rng.choice(_ANIMALS)}"
    return company, [
        (
            f"{company} is a company founded in {year} by {founder} in the city of {city}.",
            [
                (f"When was {company} founded?", str(year)),
                (f"Who founded {company}?", founder),
                (f"In which city was {company} founded?", city),
            ],
        ),
        (f"The company makes {product}.", [(f"What does {company} make?", product)]),
        (
            f"Its headquarters are in the {building} Building.",
            [(f"Where are the headquarters of {company}?", f"{building} Building")],
        ),
        (f"{company} employs {employees} people.", [(f"How many people does {company} employ?", employees)]),
        (
            f"Its best-selling model is the {brand}, released in {released}.",
            [(f"Which model of {company} sells best?", brand), (f"When was the {brand} released?", str(released))],
        ),
        (f"The current chief executive is {ceo}.", [(f"Who is the chief executive of {company}?", ceo)]),
        (f"The company's logo is a {logo}.", [(f"What is the logo of {company}?", logo)]),
    ]


def _river(rng: random.Random, name: _Names) -> tuple[str, list[Fact]]:
    river, mountains, sea, explorer, town, fish, bridge, tributary = (name() for _ in range(8))
    river, explorer = f"{river} River", f"{explorer} {name()}"
    length, year, cargo = str(rng.randint(80, 2_400)), rng.randint(1500, 1890), rng.choice(_CARGO)
    return river, [
        (
            f"The {river} rises in the {mountains} Mountains and flows {length} kilometres to the {sea} Sea.",
            [
                (f"Where does the {river} rise?", f"{mountains} Mountains"),
                (f"How many kilometres long is the {river}?", length),
                (f"Into which sea does the {river} flow?", f"{sea} Sea"),
            ],
        ),
        (
            f"It was first mapped in {year} by the explorer {explorer}.",
            [(f"Who first mapped the {river}?", explorer), (f"In what year was the {river} first mapped?", str(year))],
        ),
        (f"The largest town on its banks is {town}.", [(f"What is the largest town on the {river}?", town)]),
        (
            f"The river is home to the {fish} carp, a fish found nowhere else.",
            [(f"Which fish is found only in the {river}?", f"{fish} carp")],
        ),
        (
            f"The {bridge} Bridge is the oldest crossing of the river.",
            [(f"What is the oldest crossing of the {river}?", f"{bridge} Bridge")],
        ),
        (f"Its main tributary is the {tributary}.", [(f"What is the main tributary of the {river}?", tributary)]),
        (f"Barges on the {river} carry mostly {cargo}.", [(f"What do barges on the {river} mostly carry?", cargo)]),
    ]


_TEMPLATES = (_town, _inventor, _company, _river)


def fictional_passages(n: int, seed: int = 0) -> list[dict]:
    """``n`` passages about invented entities, 4-7 sentences and 4-6 verbatim-answer questions each."""
    rng = random.Random(seed)
    name = _Names(rng)
    records = []
    for i in range(n):
        title, facts = rng.choice(_TEMPLATES)(rng, name)
        # The first fact introduces the entity and carries >= 2 questions, so >= 4 facts give >= 5 questions.
        keep = sorted(rng.sample(range(1, len(facts)), rng.randint(3, min(6, len(facts) - 1))))
        chosen = [facts[0]] + [facts[k] for k in keep]
        qa = [pair for _, pairs in chosen for pair in pairs]
        questions = [{"question": q, "answers": [a]} for q, a in rng.sample(qa, rng.randint(4, min(6, len(qa))))]
        context = " ".join(sentence for sentence, _ in chosen)
        records.append({"id": f"fictional-{seed}-{i}", "title": title, "context": context, "questions": questions})
    return records
