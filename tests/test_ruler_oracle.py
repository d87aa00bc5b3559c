"""RULER runner against oracles: a ``generate_fn`` that answers every prompt with its reference
outputs must score exactly 100 on all 13 tasks through ``evaluate_samples`` and ``score_rows``;
one that answers with another sample's references must score below that on every task."""
import pytest

from tasks.ruler import tasks as T
from tasks.ruler.generate import Generator, GenConfig, encode_prompt, prompt_of
from tasks.ruler.toy_tokenizer import build_tokenizer
from tsa_bench.commands.ruler import PredictionLog, evaluate_samples, score_rows

TASKS = list(T.TASKS)
LENGTH = 1024
N = 3


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def samples(tok, tmp_path_factory):
    gen = Generator(tok, GenConfig(data="generated", words="builtin"), cache_dir=tmp_path_factory.mktemp("o"),
                    log=lambda m: None)
    return {t: gen.samples(t, LENGTH, N) for t in TASKS}


def _answer(sample) -> str:
    """What a perfect model says: every reference (string_match_all), or the first one
    (string_match_part, where any one reference counts)."""
    refs = sample["outputs"]
    return refs[0] if sample["metric"] == "string_match_part" else " ".join(refs)


def _oracle(tok, samples, answer_for):
    """A ``generate_fn`` that recognises each prompt by its token ids and returns the ids of
    ``answer_for(sample)``, as a model would (decoded by the runner with the same tokenizer)."""
    by_prompt = {tuple(encode_prompt(tok, prompt_of(s))): s for s in samples}

    def generate(model, input_ids, max_new_tokens, device):
        sample = by_prompt[tuple(input_ids)]
        ids = tok(" " + answer_for(sample), add_special_tokens=False)["input_ids"]
        assert len(ids) <= max_new_tokens, (sample["id"], len(ids))     # the oracle obeys the budget
        return ids, 1e-3
    return generate


def _scores(tok, by_task, answer_for, path):
    flat = [s for t in TASKS for s in by_task[t]]
    log = PredictionLog(path)
    evaluate_samples(None, tok, flat, log, progress=False, generate_fn=_oracle(tok, flat, answer_for))
    log.close()
    rows, _ = score_rows(log.done.values(), TASKS, [LENGTH], dict(method="oracle"), {})
    return {r["task"]: r for r in rows}


def test_reference_answers_score_exactly_100_on_every_task(tok, samples, tmp_path):
    rows = _scores(tok, samples, _answer, tmp_path / "oracle.jsonl")
    for t in TASKS:
        assert (rows[t]["metric"], rows[t]["value"], rows[t]["n"]) == ("score", 100.0, N), t
    assert rows["all"]["metric"] == "score_mean_tasks" and rows["all"]["value"] == 100.0


def test_another_samples_answers_score_below_the_oracle_on_every_task(tok, samples, tmp_path):
    """Each sample answered with the references of the next sample of its task."""
    nxt = {s["id"]: ss[(i + 1) % N] for ss in samples.values() for i, s in enumerate(ss)}
    rows = _scores(tok, samples, lambda s: _answer(nxt[s["id"]]), tmp_path / "shuffled.jsonl")
    for t in TASKS:
        assert rows[t]["n"] == N and rows[t]["value"] < 100.0, (t, rows[t]["value"])
    assert rows["all"]["value"] < 100.0
