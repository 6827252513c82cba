"""Knowledge-incorporation passages: fictional, builtin SQuAD, Hugging Face or local files, and a DataModule.

Every source yields normalized records::

    {"id": str, "title": str, "context": str,
     "questions": [{"question": str, "answers": [str, ...]}]}
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import datasets

from .data import ContextDataModule

SQUAD_SUBSET = Path(__file__).parent / "assets" / "squad_subset.json"
BUILTINS = "builtin:squad, builtin:fictional, builtin:fictional:N, hf:NAME[:SPLIT]"

FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "title": datasets.Value("string"),
        "context": datasets.Value("string"),
        "questions": [{"question": datasets.Value("string"), "answers": [datasets.Value("string")]}],
        "synthetic": datasets.Value("string"),  # externally written self-edit ("" when none)
    }
)

# ---------------------------------------------------------------------------------------------
# Fictional passages
# ---------------------------------------------------------------------------------------------

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
        (f"Its population was {population} at the last census.",
         [(f"What was the population of {town} at the last census?", population)]),
        (f"The town's main export is {export}, shipped mostly to {city}.",
         [(f"What is the main export of {town}?", export), (f"Where are most exports of {town} shipped?", city)]),
        (f"Every {month}, {town} holds the {festival} Festival.",
         [(f"In which month does {town} hold the {festival} Festival?", month)]),
        (f"The mayor of {town} is {mayor}, who was elected in {elected}.",
         [(f"Who is the mayor of {town}?", mayor), (f"In what year was the mayor of {town} elected?", str(elected))]),
        (f"Local cooks are proud of {dish}, a slow-cooked stew.", [(f"What stew is {town} known for?", dish)]),
        (f"The tallest building in {town} is the {tower} Tower, completed in {built}.",
         [(f"What is the tallest building in {town}?", f"{tower} Tower")]),
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
        (f"{last} is best known for inventing the {invention}, a device for {purpose}.",
         [(f"What is {person} best known for inventing?", invention), (f"What is the {invention} used for?", purpose)]),
        (f"{last} studied {field} at the {academy} Academy.",
         [(f"What did {person} study?", field), (f"At which academy did {person} study?", f"{academy} Academy")]),
        (f"In {founded}, {last} founded a workshop called {company}.",
         [(f"What was the name of the workshop founded by {person}?", company)]),
        (f"{last} married {spouse}, a {profession}.",
         [(f"Whom did {person} marry?", spouse), (f"What was the profession of {person}'s spouse?", profession)]),
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
        (f"Its headquarters are in the {building} Building.",
         [(f"Where are the headquarters of {company}?", f"{building} Building")]),
        (f"{company} employs {employees} people.", [(f"How many people does {company} employ?", employees)]),
        (f"Its best-selling model is the {brand}, released in {released}.",
         [(f"Which model of {company} sells best?", brand), (f"When was the {brand} released?", str(released))]),
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
        (f"It was first mapped in {year} by the explorer {explorer}.",
         [(f"Who first mapped the {river}?", explorer), (f"In what year was the {river} first mapped?", str(year))]),
        (f"The largest town on its banks is {town}.", [(f"What is the largest town on the {river}?", town)]),
        (f"The river is home to the {fish} carp, a fish found nowhere else.",
         [(f"Which fish is found only in the {river}?", f"{fish} carp")]),
        (f"The {bridge} Bridge is the oldest crossing of the river.",
         [(f"What is the oldest crossing of the {river}?", f"{bridge} Bridge")]),
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


# ---------------------------------------------------------------------------------------------
# Loading and validation
# ---------------------------------------------------------------------------------------------


def load_passages(path: str) -> list[dict]:
    """Load normalized passages from ``builtin:squad``, ``builtin:fictional[:N]``, ``hf:NAME[:SPLIT]``,
    or a local JSON (list of records) / JSONL (one record per line) file."""
    if path == "builtin:squad":
        return _normalize(_read_file(SQUAD_SUBSET), str(SQUAD_SUBSET), "squad")
    if path == "builtin:fictional" or path.startswith("builtin:fictional:"):
        count = path.removeprefix("builtin:fictional").removeprefix(":") or "200"
        if not count.isdigit():
            raise ValueError(f"{path!r}: expected builtin:fictional:N with a whole number N")
        return _normalize([(f"record {i}", r) for i, r in enumerate(fictional_passages(int(count)))], path, "fictional")
    if path.startswith("builtin:"):
        raise ValueError(f"unknown builtin dataset {path!r}; choose one of: {BUILTINS}")
    if path.startswith("hf:"):
        return _load_hf(path)
    return _normalize(_read_file(Path(path)), path, Path(path).stem)


def load_synthetic(path: str) -> dict[str, str]:
    """``{context_id: text}`` from a JSON / JSONL file of ``{"context_id", "text"}`` records: self-edits
    written elsewhere (e.g. by a larger model), scored as the ``synthetic`` evaluation condition."""
    texts: dict[str, str] = {}
    for where, record in _read_file(Path(path)):
        if not isinstance(record, dict):
            raise ValueError(f"{path}: {where}: expected an object, got {type(record).__name__}")
        context_id, text = record.get("context_id"), record.get("text")
        if not isinstance(context_id, str) or not isinstance(text, str) or not text.strip():
            raise ValueError(f"{path}: {where}: needs a string 'context_id' and a non-empty string 'text'")
        if context_id in texts:
            raise ValueError(f"{path}: {where}: second text for context_id {context_id!r}")
        texts[context_id] = text
    return texts


def _read_file(file: Path) -> list[tuple[str, Any]]:
    """``(location, record)`` pairs from a JSON list or a JSONL file, with decoding errors located."""
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such file (or use a builtin dataset: {BUILTINS})")
    raw = file.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{file}: not valid UTF-8 at byte offset {err.start}") from None
    if file.suffix == ".jsonl":
        lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        return [(f"line {n}", _parse_json(line, f"{file}: line {n}")) for n, line in lines]
    data = _parse_json(text, str(file))
    if not isinstance(data, list):
        raise ValueError(f"{file}: top level must be a list of records, got {type(data).__name__}")
    return [(f"record {i}", record) for i, record in enumerate(data)]


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None


def _load_hf(path: str) -> list[dict]:
    """Group the rows of a SQuAD-format Hugging Face dataset by context."""
    name, _, split = path.removeprefix("hf:").partition(":")
    split = split or "validation"
    grouped: dict[str, dict] = {}
    for row in datasets.load_dataset(name, split=split):
        record = grouped.setdefault(
            row["context"],
            {"id": f"{name}-{split}-{len(grouped)}", "title": row["title"], "context": row["context"], "questions": []},
        )
        answers = list(dict.fromkeys(row["answers"]["text"]))  # drop repeated annotator answers
        record["questions"].append({"question": row["question"], "answers": answers})
    return _normalize([(f"passage {i}", r) for i, r in enumerate(grouped.values())], path, name)


def _normalize(items: list[tuple[str, Any]], source: str, stem: str) -> list[dict]:
    """Validate records and normalize them; errors name ``source``, the record and the field."""
    records, seen = [], {}
    for index, (where, record) in enumerate(items):
        if not isinstance(record, dict):
            raise ValueError(f"{source}: {where}: expected an object, got {type(record).__name__}")
        record_id = record.get("id", f"{stem}-{index}")
        if not isinstance(record_id, (str, int)) or isinstance(record_id, bool):
            raise ValueError(f"{source}: {where}: field 'id' must be a string")
        record_id = str(record_id)
        prefix = f"{source}: {where} (id {record_id!r})"
        if record_id in seen:
            raise ValueError(f"{prefix}: duplicate id, first used by {seen[record_id]}")
        seen[record_id] = where
        title = record.get("title") or ""
        if not isinstance(title, str):
            raise ValueError(f"{prefix}: field 'title' must be a string")
        context = _text(record, "context", prefix)
        questions = record.get("questions")
        if questions is None:
            raise ValueError(f"{prefix}: field 'questions' is missing")
        if not isinstance(questions, list) or not questions:
            raise ValueError(f"{prefix}: field 'questions' must be a non-empty list")
        normalized = [_question(q, f"{prefix}: questions[{j}]") for j, q in enumerate(questions)]
        records.append({"id": record_id, "title": title, "context": context, "questions": normalized})
    return records


def _question(question: Any, prefix: str) -> dict:
    if not isinstance(question, dict):
        raise ValueError(f"{prefix}: expected an object, got {type(question).__name__}")
    text = _text(question, "question", prefix)
    answers = question.get("answers", question.get("answer"))
    if answers is None:
        raise ValueError(f"{prefix}: field 'answer' or 'answers' is missing")
    answers = [answers] if isinstance(answers, str) else answers
    if not isinstance(answers, list) or not answers:
        raise ValueError(f"{prefix}: field 'answers' must be a string or a non-empty list of strings")
    for answer in answers:
        if not isinstance(answer, str) or not answer.strip():
            raise ValueError(f"{prefix}: field 'answers' has an empty or non-string answer: {answer!r}")
    return {"question": text, "answers": answers}


def _text(record: dict, field: str, prefix: str) -> str:
    value = record.get(field)
    if value is None:
        raise ValueError(f"{prefix}: field {field!r} is missing")
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{prefix}: field {field!r} must be a non-empty string")
    return value


# ---------------------------------------------------------------------------------------------
# DataModule
# ---------------------------------------------------------------------------------------------


class KnowledgeDataModule(ContextDataModule):
    """Passages split by passage into train / val / test; batches are ``{"contexts": [record, ...]}``."""

    def __init__(
        self,
        path: str = "builtin:squad",
        train_size: int | None = None,
        val_size: int = 8,
        test_size: int = 8,
        batch_size: int = 4,
        seed: int = 0,
        num_workers: int = 0,
        synthetic: str | None = None,
        predict_split: str = "test",
    ) -> None:
        """
        Args:
            path: Passage source: ``builtin:squad``, ``builtin:fictional[:N]``, ``hf:NAME[:SPLIT]``,
                or a local JSON / JSONL file of ``{"id", "title", "context", "questions"}`` records.
            train_size: Number of training passages; ``None`` uses all passages left after val and test.
            val_size: Number of validation passages; 0 disables validation.
            test_size: Number of test passages.
            batch_size: Passages per batch.
            seed: Seed for the passage shuffle that makes the splits and for the training-order shuffle.
            num_workers: DataLoader worker processes.
            synthetic: JSON / JSONL file of ``{"context_id", "text"}``: externally written self-edits,
                scored by the ``synthetic`` condition (``model.eval.conditions``).
            predict_split: The split ``seal predict`` writes self-edits for (``train``, ``val``, ``test``).
        """
        super().__init__(batch_size, seed, num_workers, predict_split)
        for field, value in [("val_size", val_size), ("test_size", test_size)]:
            if value < 0:
                raise ValueError(f"{field} must be >= 0, got {value}")
        if train_size is not None and train_size < 1:
            raise ValueError(f"train_size must be >= 1 or None, got {train_size}")
        self.save_hyperparameters()
        self.path, self.train_size, self.val_size, self.test_size = path, train_size, val_size, test_size
        self.synthetic = synthetic

    def setup(self, stage: str | None = None) -> None:
        """Load the passages once and split them by passage with a seeded shuffle."""
        if self.train_set is not None:
            return
        passages = load_passages(self.path)
        needed = self.test_size + self.val_size + (self.train_size or 1)
        if len(passages) < needed:
            raise ValueError(
                f"{self.path}: {len(passages)} passages, but test_size={self.test_size} + val_size={self.val_size}"
                f" + train_size={self.train_size or 'at least 1'} needs {needed}"
            )
        if self.synthetic:
            texts = load_synthetic(self.synthetic)
            if not texts.keys() & {p["id"] for p in passages}:
                raise ValueError(f"{self.synthetic}: no context_id matches a passage of {self.path}")
            passages = [{**p, "synthetic": texts.get(p["id"], "")} for p in passages]
        random.Random(self.seed).shuffle(passages)
        val_end = self.test_size + self.val_size
        train = passages[val_end:][: self.train_size]
        self.test_set = _dataset(passages[: self.test_size])
        self.val_set = _dataset(passages[self.test_size : val_end])
        self.train_set = _dataset(train)


def _dataset(records: list[dict]) -> datasets.Dataset:
    """A ``datasets.Dataset`` with a fixed schema (so empty splits keep their columns)."""
    return datasets.Dataset.from_dict({key: [r.get(key, "") for r in records] for key in FEATURES}, features=FEATURES)
