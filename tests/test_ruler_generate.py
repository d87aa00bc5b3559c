"""RULER generator: determinism, the token budget, recoverable answers, structure vs the spec."""
import collections
import hashlib
import json
import math
import random
import re

import pytest

from tasks.ruler import tasks as T
from tasks.ruler.generate import (GENERATOR_VERSION, Corpora, Generator, GenConfig, count_tokens, encode_prompt,
                                  prompt_of)
from tasks.ruler.toy_tokenizer import build_tokenizer

GEN = GenConfig(data="generated", words="builtin")
LENGTHS = (1024, 2048, 4096)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def generated(tok, tmp_path_factory):
    """All 13 tasks at three lengths, 3 samples each, generated once for the module."""
    gen = Generator(tok, GEN, cache_dir=tmp_path_factory.mktemp("ruler"), log=lambda m: None)
    return gen, gen.generate(list(T.TASKS), LENGTHS, 3)


def _digest(paths):
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_and_tokenizer_give_identical_files(tok, tmp_path):
    tasks = ["niah_single_2", "niah_multikey_3", "vt", "cwe", "fwe", "qa_2"]
    digests = []
    for sub in ("a", "b"):
        gen = Generator(tok, GEN, cache_dir=tmp_path / sub, log=lambda m: None)
        gen.generate(tasks, [2048], 3)
        digests.append(_digest([gen.path(t, 2048) for t in tasks]))
    assert digests[0] == digests[1]
    other = Generator(tok, GenConfig(data="generated", words="builtin", seed=7), cache_dir=tmp_path / "c",
                      log=lambda m: None)
    other.generate(tasks, [2048], 3)
    assert _digest([other.path(t, 2048) for t in tasks]) != digests[0]


def test_more_samples_extend_a_cached_file_without_changing_it(tok, tmp_path):
    gen = Generator(tok, GEN, cache_dir=tmp_path, log=lambda m: None)
    first = gen.samples("niah_multivalue", 2048, 2)
    more = gen.samples("niah_multivalue", 2048, 4)
    assert more[:2] == first and len(more) == 4
    fresh = Generator(tok, GEN, cache_dir=tmp_path / "fresh", log=lambda m: None).samples("niah_multivalue", 2048, 4)
    assert fresh == more


@pytest.mark.parametrize("length", LENGTHS, ids=[f"L{n}" for n in LENGTHS])
def test_every_sample_fits_the_budget_and_is_close_to_it(generated, tok, length):
    gen, data = generated
    for task in T.TASKS:
        for s in data[(task, length)]:
            ids = encode_prompt(tok, prompt_of(s))
            assert len(ids) == s["length"], s["id"]
            assert len(ids) + s["tokens_to_generate"] <= length, s["id"]
            # close: within 8% (QA documents and needle lines are large units at these short lengths)
            assert len(ids) + s["tokens_to_generate"] >= 0.92 * length, (s["id"], len(ids))


def test_long_essay_samples_are_within_a_few_tokens_of_the_budget(tok, tmp_path):
    gen = Generator(tok, GEN, cache_dir=tmp_path, log=lambda m: None)
    for s in gen.samples("niah_single_2", 16384, 3):
        gap = 16384 - (count_tokens(tok, prompt_of(s)) + s["tokens_to_generate"])
        assert 0 <= gap <= 8, gap


# --------------------------------------------------------------------------- answers, recomputed from the text
# Each checker parses the prompt the model sees and derives the answer on its own, without the
# builder's internals: a builder that stores a wrong (but present) value in ``outputs`` fails.

_NEEDLE_RE = re.compile(r"One of the special magic (?:numbers|uuids) for (\S+) is: (\S+)\.(?=\s|$)")
_QUERY_RE = re.compile(r"What (?:is|are all) the special magic (?:number|uuid)s? for (.+?) mentioned in the "
                       r"provided text\?")


def _queried_keys(query: str):
    """``"a"``, ``"a, and b"``, ``"a, b, c, and d"`` -> the list of keys."""
    head, _, last = query.rpartition(", and ")
    return (head.split(", ") if head else []) + [last]


def check_niah(sample, spec):
    """The queried keys each have exactly ``num_v`` needles, the answers are exactly their values
    and no other needle's value is an answer; needle counts match the task's parameters."""
    p = spec.params
    text = sample["input"]
    query = _QUERY_RE.findall(text)[-1]
    keys = _queried_keys(query)
    assert len(keys) == p["num_q"] and len(set(keys)) == len(keys), (sample["id"], query)
    assert sample["answer_prefix"].endswith(f" for {query} mentioned in the provided text "
                                            + ("is" if len(sample["outputs"]) == 1 else "are")), sample["id"]
    needles = _NEEDLE_RE.findall(text)
    for key in keys:
        own = [v for k, v in needles if k == key]
        assert len(own) == p["num_v"], (sample["id"], key, own)
    queried_values = sorted(v for k, v in needles if k in keys)
    assert queried_values == sorted(sample["outputs"]), sample["id"]
    distractor_values = {v for k, v in needles if k not in keys}
    assert not distractor_values & set(sample["outputs"]), sample["id"]
    num_k = max(p["num_k"], p["num_q"])
    real = num_k * p["num_v"]
    if p["haystack"] == "needle":            # every filler line is a needle of its own key
        assert len(needles) == sample["haystack_size"] + real, sample["id"]
    else:
        assert len(needles) == real and len({k for k, _ in needles}) == num_k, sample["id"]


def check_vt(sample):
    """Follow every assignment chain from the queried value in the main (non-example) text."""
    main = sample["input"].rsplit("Memorize and track the chain(s)", 1)[1]
    value = re.search(r"assigned the value (\d+) in the text above", main).group(1)
    assert f"are assgined the value {value}, they are:" in sample["answer_prefix"], sample["id"]
    direct = re.findall(r"VAR (\w+) = (\d+)", main)
    links = re.findall(r"VAR (\w+) = VAR (\w+)", main)
    chain = [name for name, v in direct if v == value]
    grew = True
    while grew:
        new = [dst for dst, src in links if src in chain and dst not in chain]
        chain += new
        grew = bool(new)
    assert chain == list(sample["outputs"]), sample["id"]
    assert f" {len(chain)} variables are assgined" in sample["answer_prefix"], sample["id"]


def _top(counts, k, skip=()):
    """The ``k`` most frequent words, checked to be unambiguous (a strict gap after the k-th)."""
    ranked = sorted((w for w in counts if w not in skip), key=counts.get, reverse=True)
    assert len(ranked) > k and counts[ranked[k - 1]] > counts[ranked[k]], "tie at the cut"
    return ranked[:k]


def check_cwe(sample):
    main = sample["input"].rsplit("Memorize the ones that appear most often.\n", 1)[1].split("\nQuestion:")[0]
    entries = re.findall(r"(\d+)\. (\S+)", main)
    assert [int(i) for i, _ in entries] == list(range(1, len(entries) + 1)), sample["id"]
    assert len(entries) == len(main.split()) // 2, sample["id"]       # nothing else in the list
    counts = collections.Counter(w for _, w in entries)
    assert sorted(_top(counts, 10)) == sorted(sample["outputs"]), sample["id"]


def check_fwe(sample):
    words = sample["input"].split("coded words. ", 1)[1].split("\nQuestion:")[0].split()
    counts = collections.Counter(words)
    assert counts.most_common(1)[0][0] == "...", sample["id"]          # the noise word leads
    assert sorted(_top(counts, 3, skip=("...",))) == sorted(sample["outputs"]), sample["id"]


def check_qa(sample, spec):
    """The question's answers in the source QA set are the outputs; its gold documents are in."""
    from tasks.ruler.sources import generated_qa

    qa = generated_qa(str(spec.params["dataset"]))
    question = sample["input"].rsplit("Question: ", 1)[1]
    entries = [e for e in qa.questions if e[0] == question]
    assert entries, sample["id"]
    match = [e for e in entries if tuple(e[1]) == tuple(sample["outputs"])]
    assert match, sample["id"]
    _, answers, gold, _ = match[0]
    context = sample["input"].split("The following are given documents.\n\n", 1)[1]
    for d in gold:
        assert qa.docs[d] in context, (sample["id"], d)
    assert any(a in qa.docs[d] for a in answers for d in gold), sample["id"]


@pytest.mark.parametrize("task", list(T.TASKS), ids=list(T.TASKS))
def test_answers_equal_an_independent_recomputation_from_the_text(generated, task):
    _, data = generated
    spec = T.TASKS[task]
    check = {"niah": lambda s: check_niah(s, spec), "vt": check_vt, "cwe": check_cwe, "fwe": check_fwe,
             "qa": lambda s: check_qa(s, spec)}[spec.kind]
    for length in LENGTHS:
        for s in data[(task, length)]:
            check(s)


def test_no_niah_multikey_2_sample_is_ambiguous_at_128k(tok, tmp_path):
    """At 128K the needle haystack holds about 6,100 filler needles; with the built-in word pool
    (about 99,000 keys) a filler that reused the queried key made about 6% of the samples have
    two answers (before the fix, 6 of the 60 seeds below). Three real 128K samples, then the
    builder itself at their size for 60 seeds."""
    spec = T.TASKS["niah_multikey_2"]
    gen = Generator(tok, GEN, cache_dir=tmp_path, log=lambda m: None)
    samples = gen.samples(spec, 131072, 3)
    for s in samples:
        check_niah(s, spec)
    size = min(s["haystack_size"] for s in samples)
    assert size > 5000
    res = T.Resources(max_length=131072, word_pool="builtin")
    for i in range(60):
        built = T.build_niah(spec, res, random.Random(f"ambiguity:{i}"), size)
        check_niah({"id": i, "input": built.text, "outputs": built.outputs, "answer_prefix": built.answer_prefix,
                    "haystack_size": size}, spec)


def test_records_carry_id_source_depth_and_prefix(generated):
    _, data = generated
    s = data[("niah_single_2", 2048)][1]
    assert s["id"] == "niah_single_2-2048-00001"
    assert s["source"].startswith("generated-prose-v1")
    assert len(s["depth"]) == 1 and 0 <= s["depth"][0] <= 100
    assert s["answer_prefix"].startswith(" The special magic number for ")
    assert data[("qa_1", 2048)][0]["source"].startswith("generated-qa-v1")
    assert data[("niah_single_1", 2048)][0]["source"].startswith("noise")


def test_chat_template_is_applied_and_counted(tok, tmp_path):
    gen = Generator(tok, GenConfig(template="chat", data="generated", words="builtin"), cache_dir=tmp_path,
                    log=lambda m: None)
    for s in gen.samples("niah_single_1", 2048, 2):
        assert s["input"].startswith("<s><|user|>\n") and s["input"].endswith("<|assistant|>\n")
        ids = encode_prompt(tok, prompt_of(s))
        assert ids.count(tok.bos_token_id) == 1            # BOS from the template only, never doubled
        assert len(ids) == s["length"] and len(ids) + 128 <= 2048


def test_tokenizers_without_additive_pieces_fall_back_to_exact_counts(tok, tmp_path):
    """A tokenizer that merges across spaces breaks piece counting: the generator must notice."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tasks.ruler.toy_tokenizer import _corpus
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.Split(pattern="\n", behavior="isolated")   # spaces inside tokens
    raw.train_from_iterator(_corpus(8000), trainers.BpeTrainer(
        vocab_size=1500, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        special_tokens=["<s>"]))
    merging = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>")
    notes = []
    gen = Generator(merging, GEN, cache_dir=tmp_path, log=notes.append)
    for s in gen.samples("niah_single_2", 1024, 2):
        assert count_tokens(merging, prompt_of(s)) == s["length"]
        assert s["length"] + 128 <= 1024
    assert any("differ from full tokenisation" in n for n in notes)


def test_too_short_length_is_a_clear_error(tok, tmp_path):
    gen = Generator(tok, GEN, cache_dir=tmp_path, log=lambda m: None)
    with pytest.raises(ValueError, match="too short"):
        gen.samples("vt", 512, 1)
    with pytest.raises(ValueError, match="unknown RULER task"):
        gen.samples("niah_single_9", 1024, 1)


def test_real_data_required_but_missing_says_so(tok, tmp_path, monkeypatch):
    monkeypatch.delenv("TSA_RULER_SQUAD", raising=False)
    from tasks.ruler import sources
    monkeypatch.setattr(sources, "_hf_dataset", lambda *a, **k: None)
    gen = Generator(tok, GenConfig(data="real"), cache_dir=tmp_path, log=lambda m: None)
    with pytest.raises(sources.SourceUnavailable, match="--squad"):
        gen.samples("qa_1", 1024, 1)


def test_local_squad_file_is_used(tok, tmp_path, monkeypatch):
    squad = {"data": [{"title": "T", "paragraphs": [
        {"context": "The Zorblat river flows past Quimby. It is 40 km long.",
         "qas": [{"question": "Which river flows past Quimby?", "answers": [{"text": "Zorblat"}, {"text": "The Zorblat river"}],
                  "is_impossible": False},
                 {"question": "Unanswerable?", "answers": [], "is_impossible": True}]},
        {"context": "Quimby has a bakery.", "qas": []}]}]}
    path = tmp_path / "dev-v2.0.json"
    path.write_text(json.dumps(squad))
    gen = Generator(tok, GenConfig(data="real", squad=str(path), words="builtin"), cache_dir=tmp_path / "c",
                    log=lambda m: None)
    (s,) = gen.samples("qa_1", 1024, 1)
    assert s["source"].startswith("squad:file:dev-v2.0.json")
    assert s["outputs"] == ["Zorblat", "The Zorblat river"]
    assert "Question: Which river flows past Quimby?" in s["input"]


def test_niah_structure_matches_the_ruler_spec(generated):
    """PEERS.md §5.1: template wording, needle sentence, key/value formats, singular/plural."""
    _, data = generated
    uuid_re = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
    s1 = data[("niah_single_1", 2048)][0]
    assert s1["input"].startswith("A special magic number is hidden within the following text. Make sure to "
                                  "memorize it. I will quiz you about the number afterwards.\n")
    assert s1["input"].count(T.NOISE_LINE) > 10
    assert re.fullmatch(r"\d{7}", s1["outputs"][0])
    key = re.search(r"What is the special magic number for (\S+) mentioned in the provided text\?$",
                    s1["input"]).group(1)
    assert re.fullmatch(r"[a-z]+-[a-z]+", key)
    assert f"One of the special magic numbers for {key} is: {s1['outputs'][0]}." in s1["input"]
    assert s1["answer_prefix"] == f" The special magic number for {key} mentioned in the provided text is"
    s3 = data[("niah_single_3", 2048)][0]
    assert re.fullmatch(uuid_re, s3["outputs"][0])
    mk3 = data[("niah_multikey_3", 2048)][0]
    assert re.fullmatch(uuid_re, mk3["outputs"][0])
    assert len(re.findall(r"One of the special magic uuids for " + uuid_re, mk3["input"])) > 3
    mv = data[("niah_multivalue", 2048)][0]
    assert len(mv["outputs"]) == 4 and mv["input"].startswith("Some special magic numbers are hidden")
    assert mv["answer_prefix"].endswith("mentioned in the provided text are")
    mq = data[("niah_multiquery", 2048)][0]
    assert len(mq["outputs"]) == 4 and ", and " in mq["answer_prefix"]
    mk1 = data[("niah_multikey_1", 2048)][0]
    assert mk1["input"].count("One of the special magic numbers for ") == 4      # 1 needle + 3 distractors


def _lm_eval_ruler_source(name):
    import importlib.util
    spec = importlib.util.find_spec("lm_eval")
    if spec is None:
        pytest.skip("lm-eval is not installed")
    from pathlib import Path
    path = Path(spec.origin).parent / "tasks" / "ruler" / name
    if not path.exists():
        pytest.skip(f"lm-eval has no {path}")
    return path.read_text()


def test_templates_match_lm_eval_port_strings():
    """Our task strings equal the ones in lm-eval's port (read from its source, not imported:
    importing it builds 6M word pairs and tries to download nltk data)."""
    niah = _lm_eval_ruler_source("niah_utils.py")
    assert T.NIAH_TEMPLATE.replace("{type_v}", "{type_needle_v}") in niah.replace("\\n", "\n")
    prep = _lm_eval_ruler_source("prepare_niah.py")
    assert T.NEEDLE.replace("{type_v}", "{type_needle_v}") in prep
    assert T.NOISE_LINE in prep
    assert "The special magic {type_needle_v} for {query} mentioned in the provided text are" in prep
    for fname, pieces in {"vt_utils.py": (T.VT_TEMPLATE, T.VT_PREFIX), "cwe_utils.py": (T.CWE_TEMPLATE, T.CWE_PREFIX),
                          "fwe_utils.py": (T.FWE_TEMPLATE, T.FWE_PREFIX), "qa_utils.py": (T.QA_TEMPLATE,)}.items():
        src = _lm_eval_ruler_source(fname).replace("\\n", "\n")
        for piece in pieces:
            assert piece in src, (fname, piece[:40])


def test_local_essay_folder_is_used_and_repeated_when_short(tok, tmp_path):
    folder = tmp_path / "essays"
    folder.mkdir()
    (folder / "a.txt").write_text("Startups grow fast. Most of them fail anyway.\n\nWhy? Nobody knows.")
    (folder / "b.txt").write_text("Good writing is rewriting. Read it aloud.")
    gen = Generator(tok, GenConfig(data="real", essays=str(folder), words="builtin"), cache_dir=tmp_path / "c",
                    log=lambda m: None)
    (s,) = gen.samples("niah_single_2", 1024, 1)
    assert s["source"].startswith("essays:file:essays")
    assert s["input"].count("Good writing is rewriting.") > 5          # the short corpus repeats
    assert f"is: {s['outputs'][0]}." in s["input"] and s["length"] + 128 <= 1024


@pytest.mark.parametrize("f", [lambda s: 3 * s + 10, lambda s: int(2.7 * s) + (s // 97) * 5,
                               lambda s: s * s // 50 + 7], ids=["linear", "steps", "convex"])
def test_budget_search_finds_the_largest_fitting_size_in_few_steps(f):
    from tasks.ruler.generate import _search
    calls = []

    def measure(s):
        calls.append(s)
        return f(s)
    budget = 131_072
    size, n = _search(measure, budget, 1, 5)
    assert n == f(size) <= budget < f(size + 1)
    assert len(calls) <= 40                     # a linear crawl from 5 would take thousands
    size2, _ = _search(measure, budget, 1, 5, hi=100)
    assert size2 == min(size, 100)


# --------------------------------------------------------------------------- builders, edge cases
# Found by mutation testing (results/tests/mutation-*.md); each builds a sample or two directly.

PINNED_BUILDS = ("tsa-ruler-2", "65d4af68ca51c4dade96aec508abc8e4aef2394937ce31016c0746a85f369c52")


def _pinned_builds():
    """Every task at 256, 2048 and 4096 tokens (sizes from ``size_estimate``), qa_1 with every
    document and cwe at 128K, each from a fixed seed."""
    corpora = Corpora(GEN, log=lambda m: None)
    for length in (256, 2048, 4096):
        for name, spec in T.TASKS.items():
            yield T.build(spec, corpora.resources(spec, length), random.Random(f"pin:{name}:{length}"),
                          T.size_estimate(spec, length), 1)
    qa_1 = T.TASKS["qa_1"]
    res = corpora.resources(qa_1, 4096)
    yield T.build(qa_1, res, random.Random("pin:all-docs"), len(res.qa["squad"].docs), 1)
    cwe = T.TASKS["cwe"]                 # 128K: the word pool outgrows the word lists
    yield T.build(cwe, corpora.resources(cwe, 131072), random.Random("pin:cwe-128k"), T.size_estimate(cwe, 131072))


def test_builder_output_is_pinned_with_the_generator_version():
    """Sample files are cached under GENERATOR_VERSION, not under a hash of the builders: a
    builder whose output changes while the version stays has old cached files reused as if
    they were new. So the output for fixed seeds is pinned here; a deliberate change to what
    a builder makes updates this digest *and* bumps GENERATOR_VERSION."""
    h = hashlib.sha256()
    for b in _pinned_builds():
        h.update(json.dumps([b.text, b.outputs, b.answer_prefix, b.depth]).encode())
    assert (GENERATOR_VERSION, h.hexdigest()) == PINNED_BUILDS


def test_vt_variables_have_five_capital_letters_and_three_in_the_example():
    b = T.build_vt(T.TASKS["vt"], T.Resources(max_length=2048), random.Random("vt-names"), 40)
    example, main = b.text.rsplit("Memorize and track the chain(s)", 1)
    assert all(re.fullmatch(r"[A-Z]{3}", n) for n in re.findall(r"VAR (\w+) =", example))
    names = re.findall(r"VAR (\w+) =", main)
    assert len(names) == 5 and all(re.fullmatch(r"[A-Z]{5}", n) for n in names)
    assert sorted(b.outputs) == sorted(names)


def test_cwe_below_the_minimum_size_still_has_ten_answers_and_one_rare_word():
    b = T.build_cwe(T.TASKS["cwe"], T.Resources(max_length=2048, word_pool="builtin"), random.Random("cwe-min"), 3)
    listed = set(re.findall(r"\d+\. (\S+)", b.text.rsplit("appear most often.\n", 1)[1]))
    assert len(b.outputs) == 10 and len(listed) == 11 and set(b.outputs) < listed


def test_cwe_takes_exactly_the_word_pool_and_names_a_larger_size():
    spec, res = T.TASKS["cwe"], T.Resources(max_length=2048, word_pool="builtin")
    top = T.max_size(spec, res)
    assert len(T.build_cwe(spec, res, random.Random("cwe-max"), top).outputs) == 10
    with pytest.raises(ValueError, match=rf"^cwe needs {top + 1} distinct words, the pool holds {top}$"):
        T.build_cwe(spec, res, random.Random("cwe-max"), top + 1)


def test_zeta_is_the_riemann_zeta_function():
    assert T._zeta(2.0) == pytest.approx(math.pi ** 2 / 6, rel=1e-10)
    assert T._zeta(3.0) == pytest.approx(1.2020569031595942, rel=1e-10)       # Apery's constant


class _RepeatingRandom(random.Random):
    """A seeded RNG whose first ``choices`` / ``randrange`` answers are scripted (to force the
    collision a real seed makes only rarely), then its own."""

    def __init__(self, seed, choices=(), ranges=()):
        super().__init__(seed)
        self.scripted_choices, self.scripted_ranges = list(choices), list(ranges)

    def choices(self, population, *args, **kwargs):
        if self.scripted_choices:
            return list(self.scripted_choices.pop(0))
        return super().choices(population, *args, **kwargs)

    def randrange(self, *args, **kwargs):
        if self.scripted_ranges:
            return self.scripted_ranges.pop(0)
        return super().randrange(*args, **kwargs)


def test_fwe_words_stay_distinct_when_the_rng_repeats_one():
    rng = _RepeatingRandom("fwe-dup", choices=["aaaaaa", "bbbbbb", "bbbbbb"])   # rank 2 drawn twice
    b = T.build_fwe(T.TASKS["fwe"], T.Resources(max_length=2048), rng, 400)
    assert b.outputs[0] == "bbbbbb" and len(set(b.outputs)) == 3


@pytest.mark.parametrize("size", [1, 2, 10], ids=["gold-only", "gold-and-one", "ten"])
def test_qa_context_holds_exactly_size_distinct_documents(size):
    spec = T.TASKS["qa_1"]
    res = Corpora(GEN, log=lambda m: None).resources(spec, 4096)
    qa = res.qa["squad"]
    _, _, gold, more = qa.questions[5]
    spare = [d for d in range(len(qa.docs)) if d not in set(gold) | set(more)][:3]
    rng = _RepeatingRandom("qa-docs", ranges=[spare[0], spare[0], spare[1], spare[2]])   # one repeat
    b = T.build_qa(spec, res, rng, size, index=5)
    context = b.text.split("given documents.\n\n", 1)[1].split("\n\nAnswer the question", 1)[0]
    docs = re.findall(r"Document \d+:\n(.*?)(?=\n\nDocument \d+:|$)", context, flags=re.S)
    assert len(docs) == size and len(set(docs)) == size
    assert qa.docs[gold[0]] in docs


@pytest.mark.parametrize("n_lines, n_pieces", [(2, 3), (1, 3), (5, 2)],
                         ids=["one-gap-per-piece", "more-pieces-than-gaps", "spare-gaps"])
def test_insert_lines_keeps_every_piece_in_order_and_reports_its_depth(n_lines, n_pieces):
    """Depth = lines before the piece / all lines (%); with at least one gap per piece no two
    pieces share a gap. Twenty seeds, so a wrong draw shows up."""
    for seed in range(20):
        lines = [f"line{i}" for i in range(n_lines)]
        pieces = [f"piece{j}" for j in range(n_pieces)]
        depths = T._insert_lines(lines, pieces, random.Random(seed))
        assert [x for x in lines if x.startswith("piece")] == pieces
        assert [x for x in lines if x.startswith("line")] == [f"line{i}" for i in range(n_lines)]
        before = [sum(x.startswith("line") for x in lines[: lines.index(p)]) for p in pieces]
        assert depths == [100.0 * b / n_lines for b in before], seed
        if n_lines + 1 >= n_pieces:
            assert not any(a.startswith("piece") and b.startswith("piece") for a, b in zip(lines, lines[1:])), seed


class _EdgeDrawRandom(random.Random):
    """The first 17-bit draw is 90000: ``randint(10000, 99999)`` must reject it (it is one
    past the range) and draw again (CPython's ``randrange`` draws ``getrandbits(k)`` until
    the value is in range)."""

    def __init__(self, seed):
        super().__init__(seed)
        self.edge = True

    def getrandbits(self, k):
        if k == 17 and self.edge:
            self.edge = False
            return 90000
        return super().getrandbits(k)


def test_vt_chain_values_have_five_digits_at_the_top_of_the_range():
    names, chain = T._vt_chain(_EdgeDrawRandom("vt-edge"), 4, 5)
    assert re.fullmatch(r"VAR [A-Z]{5} = \d{5}", chain[0]) and chain[0].startswith(f"VAR {names[0]} = ")
