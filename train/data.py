"""Training examples: query groups (judged positives + mined negatives) and held-out dev queries.

From a BEIR folder with train qrels, each query keeps its graded positives; hard negatives are drawn from BM25's
top documents that nobody judged (a judged document, even one graded 0, is never called a negative) and random
negatives from the rest of the corpus. Users' own data comes as JSONL, one query per line:

    {"query": "...", "positives": ["text", {"text": "...", "grade": 2}], "negatives": ["text", ...]}

Everything is seeded, so both stages hold out the same dev queries and see the same groups.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..documents import parse_json_object, text_lines
from ..errors import InputError
from .config import DataConfig


@dataclass
class Passage:
    text: str
    #: relevance grade; 0 for a negative
    grade: float = 0.0
    doc_id: str = ""


@dataclass
class QueryGroup:
    """One training query with its positives and negatives."""

    query_id: str
    query: str
    positives: list[Passage]
    negatives: list[Passage]


@dataclass
class DevQuery:
    """A held-out query: its candidates (BM25's top k, or its JSONL passages) and all of its judgments."""

    query_id: str
    query: str
    candidates: list[Passage]
    qrels: dict[str, int]


@dataclass
class TrainingData:
    groups: list[QueryGroup]
    dev: list[DevQuery] = field(default_factory=list)

    def dev_sample(self, count: int) -> list[DevQuery]:
        """The first `count` held-out queries: what the periodic dev evaluation reranks."""
        return self.dev[:count]

    def summary(self) -> dict:
        return {
            "train_queries": len(self.groups),
            "positives": sum(len(g.positives) for g in self.groups),
            "negatives": sum(len(g.negatives) for g in self.groups),
            "dev_queries": len(self.dev),
        }


def load_training_data(config: DataConfig, seed: int = 0) -> TrainingData:
    if config.jsonl is not None:
        return from_jsonl(config.jsonl, config, seed)
    if config.beir is None:
        raise InputError("no training data: set data.beir or data.jsonl")
    from ..evaluation.beir import load_beir

    return from_beir(load_beir(config.beir, config.split), config, seed)


def _split_dev(query_ids: list[str], dev_count: int, seed: int) -> tuple[list[str], list[str]]:
    """(train ids, dev ids): a seeded shuffle, so every stage and run holds out the same queries."""
    shuffled = list(query_ids)
    random.Random(seed).shuffle(shuffled)
    dev_count = max(0, min(dev_count, len(shuffled) - 1))
    dev = set(shuffled[:dev_count])
    return [q for q in query_ids if q not in dev], [q for q in query_ids if q in dev]


def split_beir_queries(data, dev_count: int, seed: int) -> tuple[list[str], list[str]]:
    """(train ids, dev ids) of the split's queries with a positive judgment: the held-out choice every stage
    (and `train adapter`) makes."""
    query_ids = [q for q in data.queries if any(g > 0 for g in data.qrels.get(q, {}).values())]
    if not query_ids:
        raise InputError(f"{data.path or data.name}: split {data.split!r} has no query with a positive judgment")
    return _split_dev(query_ids, dev_count, seed)


def from_beir(data, config: DataConfig, seed: int = 0, retriever=None) -> TrainingData:
    """Groups and dev queries from a loaded BEIR split (`prorank_edge.beir.BeirData`)."""
    from ..evaluation.bm25 import BM25Retriever

    rng = random.Random(seed)
    train_ids, dev_ids = split_beir_queries(data, config.dev_queries, seed)
    if config.max_train_queries is not None:
        train_ids = train_ids[: config.max_train_queries]

    retriever = retriever or BM25Retriever(data.corpus)
    depth = max(config.bm25_depth, config.dev_top_k)
    wanted = train_ids + dev_ids
    hits, _ = retriever.retrieve([data.queries[q] for q in wanted], depth)
    bm25 = dict(zip(wanted, hits))
    all_doc_ids = list(data.corpus)
    text = lambda d: data.corpus[d].full_text  # noqa: E731
    # Documents judged positive for a training query (never a dev one's: those judgments stay held out).
    train_positives = {d for qid in train_ids for d, g in data.qrels[qid].items() if g > 0}

    groups = []
    for qid in train_ids:
        judged = data.qrels[qid]
        positives = [Passage(text(d), float(g), d) for d, g in judged.items() if g > 0 and d in data.corpus]
        if not positives:
            continue
        # Judged documents are never negatives, whatever their grade: a 0 grade in BEIR can still be on topic.
        pool = [d for d in bm25[qid][: config.bm25_depth] if d not in judged]
        elsewhere = [d for d in pool if d in train_positives]
        hard = rng.sample(elsewhere, min(config.other_query_positives, config.hard_negatives, len(elsewhere)))
        rest = [d for d in pool if d not in hard]
        hard += rng.sample(rest, min(config.hard_negatives - len(hard), len(rest)))
        taken = set(judged) | set(hard)
        randoms: list[str] = []
        while len(randoms) < config.random_negatives and len(taken) < len(all_doc_ids):
            candidate = all_doc_ids[rng.randrange(len(all_doc_ids))]
            if candidate not in taken:
                taken.add(candidate)
                randoms.append(candidate)
        negatives = [Passage(text(d), 0.0, d) for d in hard + randoms]
        groups.append(QueryGroup(qid, data.queries[qid], positives, negatives))

    if config.pseudo_queries:
        groups += pseudo_query_groups(data, config, rng, retriever)

    dev = [
        DevQuery(qid, data.queries[qid],
                 [Passage(text(d), float(data.qrels[qid].get(d, 0)), d) for d in bm25[qid][: config.dev_top_k]],
                 dict(data.qrels[qid]))
        for qid in dev_ids
    ]
    return TrainingData(groups, dev)


# A sentence ends at . ! or ? followed by space and a capital, digit or bracket ("p = 0.016)." stays whole).
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[])")
# What makes a conclusion read unlike a claim: PubMed's truncation mark, a structured abstract's section label
# and the opening discourse words.
_TRUNCATION_MARK = re.compile(r"\s*\(ABSTRACT TRUNCATED[^)]*\)\s*$", re.IGNORECASE)
_CONCLUSION_OPENING = re.compile(
    r"^(?:(?:CONCLUSIONS?|INTERPRETATION)\s+)?"
    r"(?i:(?:in (?:conclusion|summary)|thus|therefore|taken together|together|overall|collectively),\s+"
    r"|we conclude that\s+|(?:these|our) (?:results|data|findings) (?:suggest|show|indicate|demonstrate) that\s+)?")

# Structured abstracts can end in back matter rather than a finding ("FUNDING The Bill and Melinda Gates ...").
_BACK_MATTER = re.compile(r"^(?:FUNDING|TRIAL REGISTRATION|REGISTRATION|CLINICAL TRIAL|TRIAL)\b")


def _claim_like(sentence: str) -> str:
    claim = _CONCLUSION_OPENING.sub("", sentence)
    first = claim.split(" ", 1)[0]
    return claim[:1].upper() + claim[1:] if first[1:] == first[1:].lower() else claim  # "mtDNA" stays


def pseudo_query_groups(data, config: DataConfig, rng: random.Random, retriever) -> list[QueryGroup]:
    """Groups from the corpus alone (an inverse cloze task, Lee et al. 2019): for documents in a seeded order,
    the last sentence of a text of at least 4 sentences, without its opening discourse words ("In conclusion,",
    "These results suggest that"), is the query when it keeps 6-40 words; the title and the other sentences
    are the positive, so the query's words are not simply copied from it, and the negatives are
    drawn from BM25's top `bm25_depth` for that sentence, the source document excluded. No judgment is read.
    """
    sources = []
    doc_ids = sorted(data.corpus)
    rng.shuffle(doc_ids)
    for doc_id in doc_ids:
        if len(sources) == config.pseudo_queries:
            break
        document = data.corpus[doc_id]
        sentences = _SENTENCE_BREAK.split(_TRUNCATION_MARK.sub("", document.text.strip()))
        if len(sentences) < 4:
            continue
        query = _claim_like(sentences[-1])
        if not 6 <= len(query.split()) <= 40 or _BACK_MATTER.match(query):
            continue
        sources.append((doc_id, query, dataclasses.replace(document, text=" ".join(sentences[:-1])).full_text))
    hits, _ = retriever.retrieve([query for _, query, _ in sources], config.bm25_depth + 1)
    groups = []
    for (doc_id, query, positive), ranked in zip(sources, hits):
        pool = [d for d in ranked if d != doc_id][: config.bm25_depth]
        negatives = rng.sample(pool, min(config.hard_negatives, len(pool)))
        if negatives:
            groups.append(QueryGroup(f"pseudo:{doc_id}", query, [Passage(positive, 1.0, doc_id)],
                                     [Passage(data.corpus[d].full_text, 0.0, d) for d in negatives]))
    return groups


# ---- users' JSONL --------------------------------------------------------------------------------------

def _passages(value, kind: str, where: str, default_grade: float) -> list[Passage]:
    if not isinstance(value, list):
        raise InputError(f"{where}: field {kind!r}: expected a list, got {type(value).__name__}")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            text, grade = item, default_grade
        elif isinstance(item, dict):
            unknown = sorted(set(item) - {"text", "grade"})
            if unknown:
                raise InputError(f"{where}: field {kind!r}[{i}]: unknown key(s) {', '.join(unknown)}")
            text, grade = item.get("text"), item.get("grade", default_grade)
            if isinstance(grade, bool) or not isinstance(grade, (int, float)) or not math.isfinite(grade):
                raise InputError(f"{where}: field {kind!r}[{i}].grade: expected a finite number")
        else:
            raise InputError(f"{where}: field {kind!r}[{i}]: expected a string or {{text, grade}}")
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"{where}: field {kind!r}[{i}]: the text is missing or empty")
        if kind == "positives" and grade <= 0:
            raise InputError(f"{where}: field {kind!r}[{i}].grade: a positive needs a grade above 0")
        if kind == "negatives" and grade != 0:
            raise InputError(f"{where}: field {kind!r}[{i}].grade: a negative has grade 0")
        out.append(Passage(text, float(grade), f"{kind[0]}{i}"))
    return out


def read_jsonl_groups(path: str | Path) -> list[QueryGroup]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    groups = []
    with path.open("rb") as handle:
        for number, line in text_lines(handle, str(path)):
            where = f"{path}:{number}"
            record = parse_json_object(line, where)
            unknown = sorted(set(record) - {"query", "positives", "negatives", "id"})
            if unknown:
                raise InputError(f"{where}: unknown field(s) {', '.join(unknown)}")
            query = record.get("query")
            if not isinstance(query, str) or not query.strip():
                raise InputError(f"{where}: field 'query' is missing or empty")
            for required in ("positives", "negatives"):
                if required not in record:
                    raise InputError(f"{where}: field {required!r} is missing")
            positives = _passages(record["positives"], "positives", where, 1.0)
            negatives = _passages(record["negatives"], "negatives", where, 0.0)
            if not positives:
                raise InputError(f"{where}: field 'positives': at least one positive is needed")
            if not negatives:
                raise InputError(f"{where}: field 'negatives': at least one negative is needed")
            groups.append(QueryGroup(str(record.get("id", number)), query, positives, negatives))
    if not groups:
        raise InputError(f"{path}: no training records (the file is empty)")
    return groups


def from_jsonl(path: str | Path, config: DataConfig, seed: int = 0) -> TrainingData:
    """Groups from a JSONL file; `dev_queries` records are held out and ranked among their own passages."""
    groups = read_jsonl_groups(path)
    train_ids, dev_ids = _split_dev([g.query_id for g in groups], config.dev_queries, seed)
    by_id = {g.query_id: g for g in groups}
    if len(by_id) != len(groups):
        raise InputError(f"{path}: two records share an id")
    train = [by_id[q] for q in train_ids]
    if config.max_train_queries is not None:
        train = train[: config.max_train_queries]
    dev = []
    for qid in dev_ids:
        group = by_id[qid]
        candidates = group.positives + group.negatives
        dev.append(DevQuery(qid, group.query, candidates, {p.doc_id: int(round(p.grade)) for p in group.positives}))
    return TrainingData(train, dev)


# ---- views the two stages train on --------------------------------------------------------------------

def listwise_groups(groups: list[QueryGroup], positives_per_group: int, negatives_per_group: int,
                    seed: int = 0) -> list[tuple[str, list[Passage]]]:
    """(query, passages) lists of up to `positives_per_group` positives followed by the negatives.

    A query with more positives than fit one group yields several groups, each with fresh negatives where the
    query has enough.
    """
    rng = random.Random(seed)
    out = []
    for group in groups:
        positives = list(group.positives)
        rng.shuffle(positives)
        for start in range(0, len(positives), max(1, positives_per_group)):
            chunk = positives[start:start + positives_per_group]
            negatives = rng.sample(group.negatives, min(negatives_per_group, len(group.negatives)))
            if negatives:
                out.append((group.query, chunk + negatives))
    rng.shuffle(out)
    return out


def balanced_pairs(groups: list[QueryGroup], seed: int = 0) -> list[tuple[str, str, int]]:
    """(query, document, label) as consecutive (positive, negative) couples of one query, couples shuffled.

    Every positive is kept, each beside a negative of its own query (negatives reused when a query has more
    positives than negatives). Read in order, any even-sized slice holds as many positives as negatives: GRPO
    steps that saw only one label pushed the model toward answering that label to everything (a first CPU
    run swung between all-"0" and all-"1" from step to step), while a step that holds both rewards only
    telling them apart.
    """
    rng = random.Random(seed)
    couples = []
    for group in groups:
        if not group.positives or not group.negatives:
            continue
        negatives = rng.sample(group.negatives, len(group.negatives))
        for i, positive in enumerate(group.positives):
            couples.append(((group.query, positive.text, 1), (group.query, negatives[i % len(negatives)].text, 0)))
    rng.shuffle(couples)
    return [pair for couple in couples for pair in couple]
