"""Problem synthesis without a model: training examples, parsing, every filter and its count, vote labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from trainers.core.errors import ConfigError, DataError, config_error
from trainers.core.dedup import jaccard, near_duplicates_of
from trainers.data.problems import Problem, load_problems, write_gsm8k_jsonl
from trainers.data.synthetic import SyntheticTaskConfig, generate_split
from trainers.engine.rows import DecodeParams
from trainers.evaluation import local_decoder
from trainers.synthesis.config import SynthesisConfig
from trainers.synthesis.filters import (FilterReport, calculator_consistent, contaminated, filter_generated,
                                        final_answer_consistent, ngrams)
from trainers.synthesis.labels import VoteLabel, label_accuracy, synthesized_rows, vote_label, vote_labels
from trainers.synthesis.pipeline import vote_on, write_problems
from trainers.synthesis.prompts import (SynthesisPrompt, generation_prompts, generation_requests, level_and_topic,
                                        load_seed_texts, parse_generated, seed_excerpt, training_examples)

FIXTURES = Path(__file__).parent / "fixtures"
SEEDS = FIXTURES / "synthesis_seeds.txt"

TEST_QUESTION = ("Nora has 36 stamps in her collection. She trades away 9 stamps with her cousin on the "
                 "weekend. How many stamps does Nora have now?")
LABELED_QUESTION = "Ava bakes 12 cookies in the morning. She sells 5 cookies. How many cookies does Ava have now?"


def _written(question: str, rationale: str) -> str:
    """What the synthesizer writes after `Problem:`."""
    return f" {question}\nSolution: {rationale}"


def _prompt(i: int) -> SynthesisPrompt:
    return SynthesisPrompt(f"labeled:p{i}", 1, "sub", f"prompt {i}")


@pytest.fixture(scope="module")
def labeled() -> list[Problem]:
    return generate_split(SyntheticTaskConfig(seed=0), "labeled", 6)


# ---------------------------------------------------------------------------------------------- examples

def test_training_examples_teach_prompt_to_problem_plus_solution_with_level_from_steps(labeled):
    seeds = load_seed_texts([SEEDS])
    examples = training_examples(labeled, seeds, seed_chars=60)
    assert len(examples) == 2 * len(labeled)  # each problem: its own excerpt, then a seed text's
    for problem, own, other in zip(labeled, examples[::2], examples[1::2]):
        steps = problem.rationale.count("<<")
        assert own["level"] == other["level"] == steps and f"Level: {steps} steps." in own["prompt"]
        assert own["seed_id"] == f"labeled:{problem.id}" and other["seed_id"] in {s.id for s in seeds}
        assert f"Seed: {seed_excerpt(problem.question, 60)}\nProblem:" in own["prompt"]
        parsed = parse_generated(own["completion"])  # what the examples teach is what the parser reads
        assert parsed is not None and parsed.question == problem.question and parsed.answer == problem.answer
        assert parsed.rationale == problem.rationale


def test_real_gsm8k_solutions_round_trip_and_pass_the_checks_they_should(gsm8k_test_file):
    """GSM8K's own rationales, written back as a synthesizer would write them: every one parses and agrees
    with the calculator; the final-answer check refuses only the few whose answer is not the last computed
    value (a unit change such as $0.25 -> 25 cents, an answer read off the text)."""
    problems = load_problems(gsm8k_test_file).problems
    refused = [p.id for p in problems if not final_answer_consistent(p.rationale, p.answer)]
    assert 1 <= len(refused) <= 10, refused
    examples = training_examples(problems[:300], [], seed_chars=60)  # dedup is quadratic: a slice
    assert [e["level"] for e in examples] == [max(1, p.rationale.count("<<")) for p in problems[:300]]
    prompts = [SynthesisPrompt(e["seed_id"], e["level"], e["topic"], e["prompt"]) for e in examples]
    kept, report = filter_generated(prompts, [e["completion"] for e in examples], [], [], SynthesisConfig(), "g")
    assert report.parseable == report.calculator == 300 and report.decontamination == len(kept) >= 295


def test_level_and_topic_count_calculator_steps_and_name_their_operations():
    gsm8k = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18 a day.\n#### 18"
    assert level_and_topic(gsm8k) == (2, "sub, mul")
    assert level_and_topic("She has 4 + 4 = <<4+4=8>>8 and half is <<8/2=4>>4.\n#### 4") == (2, "add, div")
    assert level_and_topic("No steps written.\n#### 3") == (1, "mixed")


def test_seed_excerpt_is_the_first_characters_cut_to_a_whole_word():
    text = "Percent  means per\nhundred: 25% of a quantity is a quarter of it."
    assert seed_excerpt(text, 20) == "Percent means per"
    assert seed_excerpt(text, 500) == "Percent means per hundred: 25% of a quantity is a quarter of it."
    assert seed_excerpt("abcdefghijklmnop", 10) == "abcdefghij"  # one long word: cut inside it


def test_seed_files_give_one_seed_per_paragraph():
    seeds = load_seed_texts([SEEDS])
    assert [s.id for s in seeds] == ["synthesis_seeds.txt:1", "synthesis_seeds.txt:2"]
    assert seeds[0].text.startswith("A ratio compares") and "\n" not in seeds[0].text


@pytest.mark.parametrize("name, message", [("synthesis_blank.txt", "file is empty"),
                                           ("synthesis_latin1.txt", "not UTF-8 text"),
                                           ("synthesis_missing.txt", "file not found")])
def test_bad_seed_file_is_a_one_line_data_error_naming_it(name, message):
    with pytest.raises(DataError) as error:
        load_seed_texts([SEEDS, FIXTURES / name])
    assert message in str(error.value) and name in str(error.value) and "\n" not in str(error.value)


def test_generation_prompts_pair_seeds_with_other_problems_tags_deterministically(labeled):
    seeds = load_seed_texts([SEEDS])
    prompts = generation_prompts(labeled, seeds, 40, seed_chars=60, seed=3)
    assert prompts == generation_prompts(labeled, seeds, 40, seed_chars=60, seed=3)
    tags = {level_and_topic(p.rationale) for p in labeled}
    assert all((p.level, p.topic) in tags for p in prompts)
    assert {p.seed_id.split(":")[0] for p in prompts} == {"labeled", "synthesis_seeds.txt"}
    requests = generation_requests(prompts, SynthesisConfig(temperature=0.9), seed=3)
    assert all(r.calculator and r.temperature == 0.9 and r.prompt.endswith("\nProblem:") for r in requests)
    assert len({r.seed for r in requests}) == len(requests)
    with pytest.raises(DataError):
        generation_prompts([Problem("q", "Q?", 1.0)], [], 1, seed_chars=60)


def test_parse_needs_a_question_a_solution_and_a_final_answer_and_cuts_what_follows():
    good = parse_generated(_written("Ann has 3 bags of 4 apples. How many apples?",
                                    "3*4 = <<3*4=12>>12\n#### 12\nQuestion: Ann has"))
    assert good is not None and good.rationale == "3*4 = <<3*4=12>>12\n#### 12" and good.answer == 12
    for text in ["Ann has 3 apples. How many?",  # no solution
                 _written("Ann has 3 apples.", "She has 3 apples."),  # no final answer
                 _written("Ann has 3 apples.", "#### 3"),  # no reasoning
                 _written("Ann has <<3*4=12>>12 apples.", "She has 12.\n#### 12"),  # annotation in the question
                 _written("", "She has 12.\n#### 12"),
                 _written("Ann has 3 apples.", "She has 3.\n#### three")]:
        assert parse_generated(text) is None, text


# ---------------------------------------------------------------------------------------------- filters

def test_calculator_filter_drops_a_wrong_or_refused_annotation():
    assert calculator_consistent("3*4 = <<3*4=12>>12 and <<12/5=2.4>>2.4\n#### 2.4")
    assert calculator_consistent("No annotation at all.\n#### 5")
    assert not calculator_consistent("3*4 = <<3*4=13>>13\n#### 13")
    assert not calculator_consistent("<<2**999=1>>1\n#### 1")  # the calculator refuses it
    assert not calculator_consistent("<<3*4=twelve>>\n#### 12")


def test_final_answer_must_be_the_last_computed_value_when_the_last_line_computes():
    assert final_answer_consistent("<<3*4=12>>12 apples.\n#### 12", 12.0)
    assert not final_answer_consistent("<<3*4=12>>12 apples.\n#### 13", 13.0)
    assert final_answer_consistent("<<3-3=0>>0 apples.\n#### 0", 0.0)
    assert not final_answer_consistent("<<3-3=0>>0 apples.\n#### 5", 5.0)
    assert not final_answer_consistent("<<3*4=lots>> apples.\n#### 12", 12.0)
    # the last reasoning line computes nothing: the answer may be read off the text
    assert final_answer_consistent("<<3*4=12>>12 apples.\nShe gives one away, so 11 are left.\n#### 11", 11.0)


def test_decontamination_drops_a_planted_paraphrase_sharing_a_ten_gram():
    paraphrase = ("On Sunday she trades away 9 stamps with her cousin on the weekend. Nora had 36 stamps. "
                  "What is the number of stamps she has?")
    shared = ("she", "trades", "away", "9", "stamps", "with", "her", "cousin", "on", "the")
    assert shared in ngrams(paraphrase, 10) and shared in ngrams(TEST_QUESTION, 10)
    assert contaminated([paraphrase, LABELED_QUESTION], [TEST_QUESTION], 10) == [True, False]
    # the shared span is 11 words long ("... on the weekend"): n = 12 no longer sees it
    assert contaminated([paraphrase], [TEST_QUESTION], 11) == [True]
    assert contaminated([paraphrase], [TEST_QUESTION], 12) == [False]
    assert ngrams("Too short.", 10) == set()


def test_decontamination_also_reads_the_solution():
    copied = _written("Pia has 36 stamps. She gives some away. How many are left?",
                      "She trades away 9 stamps with her cousin on the weekend, so 36-9 = <<36-9=27>>27.\n#### 27")
    kept, report = filter_generated([_prompt(0)], [copied], [], [TEST_QUESTION], SynthesisConfig(), "s")
    assert (report.dedup, report.decontamination, kept) == (1, 0, [])


def test_filter_counts_each_stage_in_order_and_keeps_provenance():
    texts = [
        "Ann has 3 apples and no solution",  # unparseable
        _written("Ann has 3 bags of 4 apples each. How many apples does she have?",
                 "3*4 = <<3*4=13>>13\n#### 13"),  # calculator disagrees
        _written("Ben has 3 bags of 4 pears each. How many pears does he have?",
                 "3*4 = <<3*4=12>>12\n#### 13"),  # final answer is not the last computed value
        _written("How many?", "3*4 = <<3*4=12>>12\n#### 12"),  # question too short
        _written("Cal has 5 boxes of 6 pens each. How many pens does Cal have in all?",
                 "5*6 = <<5*6=30>>30\n#### 30"),  # kept
        _written("Cal has 5 boxes of 6 pens each! How many pens does Cal have in all?",
                 "5*6 = <<5*6=30>>30\n#### 30"),  # duplicate of the one before
        _written(LABELED_QUESTION, "12-5 = <<12-5=7>>7\n#### 7"),  # copy of a labeled question
        _written("On Sunday she trades away 9 stamps with her cousin on the weekend. Nora had 36 stamps. "
                 "How many are left?", "36-9 = <<36-9=27>>27\n#### 27"),  # contaminated
        _written("Dee reads 7 pages a day for 8 days. How many pages does Dee read?",
                 "7*8 = <<7*8=56>>56\n#### 56"),  # kept
    ]
    prompts = [_prompt(i) for i in range(len(texts))]
    config = SynthesisConfig(min_question_words=4)
    kept, report = filter_generated(prompts, texts, [LABELED_QUESTION], [TEST_QUESTION], config, "synth-1")
    assert list(report.as_dict().items()) == [
        ("generated", 9), ("parseable", 8), ("calculator", 7), ("final_answer", 6), ("length", 5), ("dedup", 3),
        ("decontamination", 2)]
    assert [(k.id, k.seed_id, k.answer, k.synthesizer_version) for k in kept] == [
        ("synth-1-00004", "labeled:p4", 30.0, "synth-1"), ("synth-1-00008", "labeled:p8", 56.0, "synth-1")]
    assert report.summary() == ("generated 9 -> parseable 8 -> calculator 7 -> final_answer 6 -> length 5 -> "
                                "dedup 3 -> decontamination 2")
    assert filter_generated([], [], [], [], config, "synth-1") == ([], FilterReport())
    with pytest.raises(ValueError):
        filter_generated(prompts[:1], texts, [], [], config, "synth-1")


def test_length_bounds_come_from_the_config():
    text = _written("Eve has 2 cats and 3 dogs. How many pets does Eve have?", "2+3 = <<2+3=5>>5\n#### 5")
    # 13 words in the question, 5 in the solution; each bound is inclusive
    for config, kept in [(SynthesisConfig(), 1), (SynthesisConfig(max_question_words=13), 1),
                         (SynthesisConfig(max_question_words=12), 0), (SynthesisConfig(min_question_words=13), 1),
                         (SynthesisConfig(min_question_words=14), 0), (SynthesisConfig(max_rationale_words=5), 1),
                         (SynthesisConfig(max_rationale_words=4), 0)]:
        assert filter_generated([_prompt(0)], [text], [], [], config, "s")[1].length == kept


# ---------------------------------------------------------------------------------------------- votes

@pytest.mark.parametrize("answers, threshold, expected", [
    ([5.0, 5.0, 3.0], 2 / 3, (5.0, 2, True)),  # exactly at the threshold
    ([5.0, 5.0, 3.0], 0.67, (5.0, 2, False)),  # just above it
    ([5.0, 5.0, 5.0], 1.0, (5.0, 3, True)),
    ([5.0, 5.0, 5.0, None], 1.0, (5.0, 3, False)),  # a sample with no answer still counts in k
    ([5.0, 5.0, 3.0, 3.0], 0.5, (5.0, 2, False)),  # a tie is no majority
    ([5.0, 5.00001, 3.0, 2.0], 0.5, (5.0, 2, True)),  # one answer within the checker's tolerance
    ([None, None], 0.1, (None, 0, False)),
    ([], 0.5, (None, 0, False)),
])
def test_vote_label_keeps_the_majority_only_at_or_above_the_threshold(answers, threshold, expected):
    assert vote_label(answers, threshold) == expected


@pytest.mark.parametrize("threshold", [0, -0.1, 1.01, float("nan"), True, "0.5"])
def test_threshold_outside_zero_one_is_a_one_line_config_error(threshold):
    with pytest.raises(ConfigError, match=r"^vote_threshold must be in \(0, 1\], got .*$"):
        vote_label([1.0], threshold)


def test_vote_labels_grade_against_gold_without_letting_it_decide():
    records = [{"question_id": q, "strict_answer": a} for q, a in
               [("a", 4.0), ("b", 1.0), ("a", 4.0), ("b", 2.0), ("a", 9.0), ("b", 1.0), ("c", None)]]
    blind = vote_labels(records, 0.6)
    graded = vote_labels(records, 0.6, gold={"a": 9.0, "b": 1.0})
    assert [(v.question_id, v.label, v.votes, v.samples, v.kept) for v in blind] == [
        ("a", 4.0, 2, 3, True), ("b", 1.0, 2, 3, True), ("c", None, 0, 1, False)]
    assert [v.correct for v in blind] == [None, None, None]
    assert [(v.kept, v.correct) for v in graded] == [(True, False), (True, True), (False, None)]


def test_label_accuracy_buckets_by_vote_share_with_the_last_bucket_closed():
    labels = [VoteLabel(str(i), 1.0, 0, 8, share, share >= 0.6, correct) for i, (share, correct) in enumerate(
        [(0.125, False), (0.5, False), (0.5, True), (0.625, True), (1.0, True), (1.0, True), (0.8, False)])]
    labels.append(VoteLabel("no-gold", 1.0, 8, 8, 1.0, True, None))  # no gold: not graded
    assert label_accuracy(labels) == [
        {"vote_share_low": 0.0, "vote_share_high": 0.2, "questions": 1, "accuracy": 0.0},
        {"vote_share_low": 0.2, "vote_share_high": 0.4, "questions": 0, "accuracy": None},
        {"vote_share_low": 0.4, "vote_share_high": 0.6, "questions": 2, "accuracy": 0.5},
        {"vote_share_low": 0.6, "vote_share_high": 0.8, "questions": 1, "accuracy": 1.0},
        {"vote_share_low": 0.8, "vote_share_high": 1.0, "questions": 3, "accuracy": 2 / 3},
    ]
    assert label_accuracy(labels, edges=(0.0, 1.0))[0]["questions"] == 7
    with pytest.raises(ConfigError):
        label_accuracy(labels, edges=(0.5, 0.5, 1.0))


def test_kept_labels_become_u_rows_with_provenance_that_the_loader_reads(tmp_path):
    texts = [_written("Cal has 5 boxes of 6 pens each. How many pens does Cal have?", "<<5*6=30>>30\n#### 30"),
             _written("Dee reads 7 pages a day for 8 days. How many pages?", "<<7*8=56>>56\n#### 56")]
    kept, _ = filter_generated([_prompt(0), _prompt(1)], texts, [], [], SynthesisConfig(), "synth-2")
    records = [{"question_id": kept[0].id, "strict_answer": a} for a in (30.0, 30.0, 31.0)] + \
              [{"question_id": kept[1].id, "strict_answer": a} for a in (56.0, 12.0, 13.0)]
    labels = vote_labels(records, 0.6, gold={k.id: k.answer for k in kept})
    rows = synthesized_rows(kept, labels)
    assert [r["id"] for r in rows] == ["synth-2-00000"]
    assert rows[0]["provenance"] == {"synthesizer_version": "synth-2", "seed_id": "labeled:p0",
                                     "vote_share": 2 / 3, "votes": 2, "samples": 3, "level": 1, "topic": "sub"}
    path = tmp_path / "u.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = load_problems(path).problems
    assert [(p.id, p.answer, p.rationale) for p in loaded] == [("synth-2-00000", 30.0, None)]


# ---------------------------------------------------------------------------------------------- decoding

def test_write_and_vote_run_through_any_decode_fn_with_a_real_untrained_model(base_checkpoint, labeled):
    """The plumbing with a real (untrained, so unparseable) model, through a pool-style decode_fn that also
    returns model versions: the counts stay consistent and every question gets a vote of k samples."""
    model = local_decoder(base_checkpoint)
    calls = []

    def pool_style(rows):
        calls.append(rows)
        decoded = model(rows)
        return decoded, ["v"] * len(decoded)

    config = SynthesisConfig(problems_per_iteration=3, max_new_tokens=16)
    kept, report = write_problems(labeled, [], [], config, "synth-0", pool_style, seed=1)
    assert report.generated == 3 and len(calls[0]) == 3 and all(r.calculator for r in calls[0])
    assert kept == [] and report.parseable == 0  # random weights never write `Solution:` ... `#### N`
    params = DecodeParams(n=2, temperature=0.7, max_new_tokens=8, seed=1)
    labels = vote_on(labeled[:2], pool_style, params, threshold=0.5)
    assert [(v.question_id, v.samples) for v in labels] == [(p.id, 2) for p in labeled[:2]]
    assert all(v.correct is None and v.vote_share == v.votes / 2 for v in labels)


# ---------------------------------------------------------------------------------------------- config

def test_synthesis_config_documents_every_field_and_refuses_bad_values():
    assert all(field.description for field in SynthesisConfig.model_fields.values())
    assert SynthesisConfig().ngram == 10 and not SynthesisConfig().enabled
    assert SynthesisConfig().train and not SynthesisConfig(synthesizer_path="synth", train=False).train
    for bad in [{"vote_threshold": 0}, {"vote_threshold": 1.5}, {"ngram": 0}, {"vote_treshold": 0.5},
                {"min_question_words": 20, "max_question_words": 10}, {"train": False}]:
        with pytest.raises(ValidationError) as error:
            SynthesisConfig(**bad)
        message = str(config_error(error.value, SynthesisConfig, prefix="synthesis"))
        assert message.startswith("synthesis") and "\n" not in message
    with pytest.raises(ValidationError) as error:
        SynthesisConfig(vote_treshold=0.5)
    assert "did you mean 'vote_threshold'" in str(config_error(error.value, SynthesisConfig, prefix="synthesis"))


# ---------------------------------------------------------------------------------------------- unanswered U rows

def test_unlabeled_rows_may_leave_out_their_answer_only_when_the_loader_is_told(tmp_path):
    path = tmp_path / "u.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in [
        {"id": "a", "question": "Ann has 3 apples. She buys 2. How many?", "answer": "#### 5"},
        {"id": "b", "question": "Ben has 4 pens. He loses 1. How many?"},
        {"id": "c", "question": "Cal has 6 cups. He breaks 2. How many?", "answer": None}]))
    with pytest.raises(DataError, match="line 2: missing key 'answer'"):
        load_problems(path)
    problems = load_problems(path, unanswered=True).problems
    assert [(p.id, p.answer) for p in problems] == [("a", 5.0), ("b", None), ("c", None)]
    again = load_problems(write_gsm8k_jsonl(problems, tmp_path / "copy.jsonl"), unanswered=True).problems
    assert again == problems
    assert "answer" not in json.loads((tmp_path / "copy.jsonl").read_text().splitlines()[1])


def test_near_duplicates_of_a_reference_set_agree_with_pairwise_jaccard(labeled):
    references = [p.question for p in generate_split(SyntheticTaskConfig(seed=1), "labeled", 200)]
    texts = [p.question for p in labeled] + [references[3], references[7] + " Now?", "", "Totally unrelated words."]
    for threshold in (0.0, 0.5, 0.8, 1.0):
        expected = [any(jaccard(t, r) >= threshold for r in references) for t in texts]
        assert near_duplicates_of(texts, references, threshold) == expected
    assert near_duplicates_of(texts, [], 0.5) == [False] * len(texts)
    assert near_duplicates_of(["", "a b"], [""], 0.9) == [True, False]  # two empty texts are one text
    with pytest.raises(ConfigError):
        near_duplicates_of(texts, references, 1.5)


def test_run_config_has_a_documented_synthesis_section_with_one_line_errors():
    from cluster.config import RunConfig, parse_config

    assert RunConfig.model_fields["synthesis"].annotation is SynthesisConfig
    config = parse_config({"data": {"synthetic": {}}, "synthesis": {"enabled": True, "vote_threshold": 1.0}})
    assert config.synthesis.enabled and config.synthesis.vote_threshold == 1.0
    for bad in (0, -0.5, 1.01):
        with pytest.raises(ConfigError, match=r"^config: synthesis\.vote_threshold: [^\n]*$"):
            parse_config({"data": {"synthetic": {}}, "synthesis": {"vote_threshold": bad}})
