"""The embedded default dataset: synthetic GSM8K-style word problems a tiny model can learn.

A problem is a starting quantity followed by a chain of 1-5 operations (add, sub, mul, div, percent). Every
operation introduces one new number and becomes one calculator step in the rationale, so the answer depends
on every number except the distractor's. Two story families make the chaining non-trivial:

  stock    one subject's quantity changes ("She sells 4 cookies.")
  compare  each new person is defined relative to the previous one, sometimes in the reverse direction
           ("Ana has 3 more marbles than Ben." means Ben has Ana's count minus 3)

The vocabulary is small on purpose (16 names, a few items per template); the difficulty is in choosing
and composing operations. Every `<<expr=result>>` is written by `trainers.core.calculator.calculate`, so the
annotations are exactly what calculator-forced decoding produces.

The last `ood_templates` templates are held out: only the `ood` split uses them, with larger numbers.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path

from trainers.core.calculator import calculate
from trainers.data.problems import Problem, write_gsm8k_jsonl
from trainers.core.errors import ConfigError

OPERATIONS = ("add", "sub", "mul", "div", "percent")
SPLITS = ("labeled", "unlabeled", "dev", "test", "ood")
LIMIT = 10_000  # every quantity stays a non-negative integer below this
PERCENTS = (10, 20, 25, 30, 40, 50, 60, 70, 75, 80, 90)
MAX_STEPS = 5


@dataclass
class SyntheticTaskConfig:
    """How the synthetic task is generated. Same config -> byte-identical files.

    Attributes:
        seed: seeds every split's generator (each split has its own, so sizes do not shift other splits).
        n_labeled: problems with full rationales (the SFT warm-up set L).
        n_unlabeled: problems whose answer is only `#### N` (the self-training pool U).
        n_dev: held-in problems for model selection / promotion.
        n_test: held-in problems for the final report.
        n_ood: problems from the held-out templates, with numbers up to `ood_number_scale * max_number`.
        min_steps: fewest calculator steps (operations) per problem, 1..5.
        max_steps: most calculator steps per problem, min_steps..5.
        max_number: largest starting quantity and add/sub operand; multipliers and divisors go up to
            max(2, max_number // 5).
        distractor_prob: chance that a problem gets one irrelevant sentence with a number in it.
        operations: the operations problems may use, any of add, sub, mul, div, percent.
        ood_templates: how many templates (the last ones in TEMPLATES) are held out for the ood split.
        ood_number_scale: the ood split's numbers range up to this multiple of max_number.
    """

    seed: int = 0
    n_labeled: int = 400
    n_unlabeled: int = 3000
    n_dev: int = 300
    n_test: int = 500
    n_ood: int = 300
    min_steps: int = 1
    max_steps: int = 4
    max_number: int = 50
    distractor_prob: float = 0.3
    operations: tuple[str, ...] = OPERATIONS
    ood_templates: int = 3
    ood_number_scale: int = 2

    def __post_init__(self) -> None:
        # YAML and JSON configs hand over lists.
        self.operations = tuple(self.operations)
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first field that cannot work."""
        for name in ("seed", "n_labeled", "n_unlabeled", "n_dev", "n_test", "n_ood", "min_steps", "max_steps",
                     "max_number", "ood_templates", "ood_number_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"synthetic.{name} must be an integer, got {value!r}")
            if name != "seed" and value < 0:
                raise ConfigError(f"synthetic.{name} must be >= 0, got {value}")
        if not 1 <= self.min_steps <= self.max_steps <= MAX_STEPS:
            raise ConfigError(
                f"synthetic steps need 1 <= min_steps <= max_steps <= {MAX_STEPS}, "
                f"got min_steps={self.min_steps}, max_steps={self.max_steps}"
            )
        if not 5 <= self.max_number <= 1000:
            raise ConfigError(f"synthetic.max_number must be in 5..1000, got {self.max_number}")
        if not 1 <= self.ood_number_scale <= 10:
            raise ConfigError(f"synthetic.ood_number_scale must be in 1..10, got {self.ood_number_scale}")
        if isinstance(self.distractor_prob, bool) or not isinstance(self.distractor_prob, (int, float)) \
                or not 0.0 <= self.distractor_prob <= 1.0:
            raise ConfigError(f"synthetic.distractor_prob must be in [0, 1], got {self.distractor_prob!r}")
        unknown = [op for op in self.operations if op not in OPERATIONS]
        if unknown or not self.operations or len(set(self.operations)) != len(self.operations):
            raise ConfigError(
                f"synthetic.operations must be distinct names from {', '.join(OPERATIONS)}, got {self.operations}"
            )
        if self.ood_templates > len(TEMPLATES) - 1:
            raise ConfigError(
                f"synthetic.ood_templates must leave a template for training: at most {len(TEMPLATES) - 1}, "
                f"got {self.ood_templates}"
            )
        if self.n_ood > 0 and self.ood_templates == 0:
            raise ConfigError("synthetic.n_ood > 0 needs ood_templates >= 1")


@dataclass(frozen=True)
class Template:
    """One story frame. `stock`: `subject` (a name when None) gains/loses items; `compare`: a chain of
    people related by `verb` ("has", "scores", ...). Format fields: {S} subject, {x} start, {k} operand,
    {item}, {Q} another person, {poss} the subject's possessive, {v}/{vb} verb 3rd person/base form."""

    name: str
    family: str
    items: tuple[str, ...]
    start: tuple[str, ...]
    question: tuple[str, ...]
    gains: tuple[str, ...] = ()
    losses: tuple[str, ...] = ()
    verb: tuple[str, str] = ("has", "have")
    subject: str | None = None


def _stock(name: str, items: tuple[str, ...], start: tuple[str, ...], gains: tuple[str, ...],
           losses: tuple[str, ...], question: tuple[str, ...] = ("How many {item} does {S} have now?",
                                                                 "How many {item} does {S} have at the end?"),
           subject: str | None = None) -> Template:
    return Template(name, "stock", items, start, question, gains, losses, subject=subject)


def _compare(name: str, items: tuple[str, ...], verb: tuple[str, str], start: tuple[str, ...]) -> Template:
    question = ("How many {item} does {B} {vb}?",)
    return Template(name, "compare", items, start, question, verb=verb)


# The last ones are the default held-out (ood) templates: one of each family plus a fixed-subject stock
# story, so held-out problems are new frames for structures the model has seen.
TEMPLATES: tuple[Template, ...] = (
    _stock("bakery", ("cookies", "muffins", "cakes", "pies"),
           ("{S} bakes {x} {item} in the morning.", "{S} has {x} {item} for the bake sale."),
           ("bakes {k} more {item}", "gets {k} more {item} from {Q}"),
           ("sells {k} {item}", "gives {k} {item} to {Q}")),
    _stock("orchard", ("apples", "pears", "plums", "oranges"),
           ("{S} picks {x} {item} from the trees.", "{S} has a basket with {x} {item}."),
           ("picks {k} more {item}", "finds {k} more {item} on the ground"),
           ("eats {k} {item}", "gives {k} {item} to {Q}")),
    _stock("collection", ("stamps", "cards", "coins", "shells"),
           ("{S} has {x} {item} in {poss} collection.", "{S} collects {x} {item}."),
           ("buys {k} more {item}", "gets {k} {item} from {Q}"),
           ("trades away {k} {item}", "gives {k} {item} to {Q}")),
    _stock("classroom", ("pencils", "stickers", "markers", "erasers"),
           ("{S} keeps {x} {item} in a box.", "{S} has a box of {x} {item}."),
           ("puts {k} more {item} in the box", "buys {k} more {item}"),
           ("hands out {k} {item}", "gives {k} {item} to {Q}")),
    _compare("marbles", ("marbles", "stickers", "beads", "cards"), ("has", "have"),
             ("{A} has {x} {item}.", "{A} owns {x} {item}.")),
    _stock("eggs", ("eggs",),
           ("{S}'s hens lay {x} {item}.", "{S} collects {x} {item} from the hens."),
           ("collects {k} more {item}", "buys {k} more {item}"),
           ("uses {k} {item} for baking", "sells {k} {item} to {Q}")),
    _stock("savings", ("dollars",),
           ("{S} has {x} {item} in a jar.", "{S} saves {x} {item}."),
           ("earns {k} more {item}", "gets {k} {item} from {Q}"),
           ("spends {k} {item} on a book", "pays {Q} {k} {item}")),
    _compare("game", ("points",), ("scores", "score"),
             ("{A} scores {x} {item} in a game.", "In a game, {A} scores {x} {item}.")),
    _stock("library", ("books", "comics", "magazines", "notebooks"),
           ("{S} has {x} {item} on a shelf.", "{S} owns {x} {item}."),
           ("buys {k} more {item}", "gets {k} {item} from {Q}"),
           ("lends {k} {item} to {Q}", "donates {k} {item}")),
    _compare("reading", ("pages",), ("reads", "read"),
             ("{A} reads {x} {item} this week.", "This month {A} reads {x} {item}.")),
    _stock("garden", ("roses", "tulips", "daisies", "lilies"),
           ("{S} plants {x} {item}.", "{S} has {x} {item} in {poss} garden."),
           ("plants {k} more {item}", "gets {k} {item} from {Q}"),
           ("picks {k} {item} for a vase", "gives {k} {item} to {Q}"),
           ("How many {item} does {S} have now?", "How many {item} are in {S}'s garden now?")),
    _compare("saving", ("dollars",), ("saves", "save"),
             ("{A} saves {x} {item}.", "Over the summer {A} saves {x} {item}.")),
    # held out by default
    _stock("fishing", ("fish",),
           ("{S} catches {x} {item} in the lake.", "{S} has {x} {item} in a bucket."),
           ("catches {k} more {item}", "gets {k} {item} from {Q}"),
           ("lets {k} {item} go", "gives {k} {item} to {Q}")),
    _compare("race", ("laps",), ("runs", "run"),
             ("{A} runs {x} {item} around the track.", "At practice {A} runs {x} {item}.")),
    _stock("shop", ("toys", "balls", "kites", "puzzles"),
           ("A toy shop has {x} {item}.", "The shop has {x} {item} on its shelves."),
           ("gets a delivery of {k} {item}", "orders {k} more {item}"),
           ("sells {k} {item}", "gives {k} {item} to a school"),
           ("How many {item} does the shop have now?",), subject="the shop"),
)

NAMES = {  # name -> (subject pronoun, possessive)
    "Mia": ("she", "her"), "Ava": ("she", "her"), "Emma": ("she", "her"), "Lily": ("she", "her"),
    "Zoe": ("she", "her"), "Nora": ("she", "her"), "Ruth": ("she", "her"), "Ella": ("she", "her"),
    "Leo": ("he", "his"), "Sam": ("he", "his"), "Max": ("he", "his"), "Ben": ("he", "his"),
    "Tom": ("he", "his"), "Jack": ("he", "his"), "Owen": ("he", "his"), "Ian": ("he", "his"),
}

DISTRACTORS = (
    "{Q} is {n} years old.",
    "{Q} lives {n} miles away.",
    "It is {n} degrees outside today.",
    "{Q} has {n} hats.",
    "The school has {n} classrooms.",
)

# (question sentence, rationale sentence, calculator expression) per family and operation. {calc} becomes
# `expr = <<expr=result>>result`. In `compare`, {A} is the previous person and {B} the new one.
_STOCK_PHRASES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "add": (("{S} {gain}.", "{N} {gain}, so {P} has {calc} {item}.", "{x}+{k}"),),
    "sub": (("{S} {loss}.", "{N} {loss}, so {P} has {calc} {item} left.", "{x}-{k}"),),
    "mul": (
        ("{S} ends up with {k} times as many {item} as {P} had before.",
         "{N} ends up with {k} times as many, so {P} has {calc} {item}.", "{x}*{k}"),
        ("By the end of the week, {S} has {k} times as many {item} as before.",
         "{N} has {k} times as many as before, so {P} has {calc} {item}.", "{x}*{k}"),
    ),
    "div": (
        ("{S} splits the {item} into {k} equal groups and keeps one group.",
         "{N} keeps one of {k} equal groups, so {P} has {calc} {item}.", "{x}/{k}"),
        ("{S} puts the {item} into {k} equal piles and keeps only one pile.",
         "{N} keeps one of {k} equal piles, so {P} has {calc} {item}.", "{x}/{k}"),
    ),
    "percent": (
        ("{S} keeps {p}% of the {item} and gives the rest away.",
         "{N} keeps {p}% of {x}, which is {calc} {item}.", "{x}*{p}/100"),
        ("{S} gives away {q}% of the {item}.",
         "{N} gives away {q}%, so {P} keeps {calc} {item}.", "{x}*(100-{q})/100"),
    ),
}

_COMPARE_PHRASES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "add": (
        ("{B} {v} {k} more {item} than {A}.", "{B} {v} {k} more than {A}, so {B} {v} {calc} {item}.", "{x}+{k}"),
        ("{A} {v} {k} fewer {item} than {B}.", "{A} {v} {k} fewer than {B}, so {B} {v} {calc} {item}.", "{x}+{k}"),
    ),
    "sub": (
        ("{B} {v} {k} fewer {item} than {A}.", "{B} {v} {k} fewer than {A}, so {B} {v} {calc} {item}.", "{x}-{k}"),
        ("{A} {v} {k} more {item} than {B}.", "{A} {v} {k} more than {B}, so {B} {v} {calc} {item}.", "{x}-{k}"),
    ),
    "mul": (
        ("{B} {v} {k} times as many {item} as {A}.",
         "{B} {v} {k} times as many as {A}, so {B} {v} {calc} {item}.", "{x}*{k}"),
        ("{A} {v} 1/{k} as many {item} as {B}.",
         "{A} {v} 1/{k} as many as {B}, so {B} {v} {calc} {item}.", "{x}*{k}"),
    ),
    "div": (
        ("{A} {v} {k} times as many {item} as {B}.",
         "{A} {v} {k} times as many as {B}, so {B} {v} {calc} {item}.", "{x}/{k}"),
        ("{B} {v} 1/{k} as many {item} as {A}.",
         "{B} {v} 1/{k} as many as {A}, so {B} {v} {calc} {item}.", "{x}/{k}"),
    ),
    "percent": (
        ("{B} {v} {p}% as many {item} as {A}.", "{B} {v} {p}% of {x}, which is {calc} {item}.", "{x}*{p}/100"),
        ("{B} {v} {q}% fewer {item} than {A}.",
         "{B} {v} {q}% fewer than {A}, so {B} {v} {calc} {item}.", "{x}*(100-{q})/100"),
    ),
}

_CONNECTORS = ("", "", "Then ", "After that, ", "Later, ")
_ATTEMPTS_PER_PROBLEM = 200  # rejection sampling; only odd configs (e.g. div only, 5 steps) need many


def split_templates(config: SyntheticTaskConfig, split: str) -> tuple[Template, ...]:
    """The templates a split draws from: the held-out tail for `ood`, the rest for every other split."""
    _check_split(split)
    cut = len(TEMPLATES) - config.ood_templates
    return TEMPLATES[cut:] if split == "ood" else TEMPLATES[:cut]


def generate_split(config: SyntheticTaskConfig, split: str, n: int,
                   exclude: Collection[str] = ()) -> list[Problem]:
    """`n` problems for `split` with ids `syn-{split}-00000`...; questions in `exclude` are never produced.

    Deterministic in (config, split, n, exclude). Problems always carry full rationales; build_synthetic_task
    strips them for the unlabeled split.
    """
    return [problem for problem, _ in _generate(config, split, n, exclude)]


def build_synthetic_task(config: SyntheticTaskConfig, out_dir: str | Path) -> dict[str, Path]:
    """Write labeled/unlabeled/dev/test/ood.jsonl (GSM8K format) under out_dir; returns split -> path.

    No question text appears in two splits. Evaluation splits are made first, so their content depends only
    on the seed and their own size, not on how much training data is asked for.
    """
    out_dir = Path(out_dir)
    sizes = {"test": config.n_test, "dev": config.n_dev, "ood": config.n_ood,
             "labeled": config.n_labeled, "unlabeled": config.n_unlabeled}
    seen: set[str] = set()
    paths: dict[str, Path] = {}
    for split, n in sizes.items():
        problems = generate_split(config, split, n, exclude=seen)
        seen.update(p.question for p in problems)
        if split == "unlabeled":
            problems = [replace(p, rationale=None) for p in problems]
        paths[split] = write_gsm8k_jsonl(problems, out_dir / f"{split}.jsonl")
    return {split: paths[split] for split in SPLITS}


def corpus_texts(config: SyntheticTaskConfig, n: int) -> list[str]:
    """`n` "question\\nrationale" strings from the training templates, for tokenizer training.

    Drawn from their own generator stream and never from the held-out templates, so the tokenizer sees
    nothing of the ood frames (their words still encode, as smaller pieces).
    """
    return [f"{p.question}\n{p.rationale}" for p, _ in _generate(config, "corpus", n, ())]


# ---------------------------------------------------------------------------------------------- sampling


def _check_split(split: str) -> None:
    if split not in SPLITS and split != "corpus":
        raise ConfigError(f"unknown synthetic split {split!r}; expected one of {', '.join(SPLITS)}")


def _generate(config: SyntheticTaskConfig, split: str, n: int,
              exclude: Collection[str]) -> list[tuple[Problem, str]]:
    """(problem, template name) pairs; the template name is for tests and debugging."""
    _check_split(split)
    if n < 0:
        raise ConfigError(f"cannot generate {n} problems")
    templates = split_templates(config, "labeled" if split == "corpus" else split)
    if n and not templates:
        raise ConfigError(f"synthetic split {split!r} has no templates (ood_templates={config.ood_templates})")
    scale = config.ood_number_scale if split == "ood" else 1
    max_number = config.max_number * scale
    # A string seed is hashed with sha512 (not hash()), so the stream does not depend on PYTHONHASHSEED.
    rng = random.Random(f"dpost-synthetic/{config.seed}/{split}")
    out: list[tuple[Problem, str]] = []
    seen: set[str] = set()
    budget = _ATTEMPTS_PER_PROBLEM * max(n, 1)
    while len(out) < n:
        template = rng.choice(templates)
        question, steps, answer = _sample_problem(rng, template, config, max_number)
        budget -= 1
        if budget <= 0:
            raise ConfigError(
                f"synthetic split {split!r}: only {len(out)} of {n} distinct problems could be made; "
                "allow more operations, steps or a larger max_number"
            )
        if question is None or question in seen or question in exclude:
            continue
        seen.add(question)
        rationale = "\n".join(steps) + f"\n#### {answer}"
        out.append((Problem(f"syn-{split}-{len(out):05d}", question, float(answer), rationale), template.name))
    return out


def _sample_problem(rng: random.Random, template: Template, config: SyntheticTaskConfig,
                    max_number: int) -> tuple[str | None, list[str], int]:
    """One problem as (question, rationale steps, answer); question None when the chain got stuck."""
    n_steps = rng.randint(config.min_steps, config.max_steps)
    max_factor = max(2, max_number // 5)
    item = rng.choice(template.items)
    people = rng.sample(sorted(NAMES), MAX_STEPS + 2)  # chain people, plus one spare for {Q}
    bystander = people[-1]
    # The distractor goes before one of the operation sentences or before the question.
    distract_at = rng.randint(0, n_steps) if rng.random() < config.distractor_prob else -1

    x = rng.randint(2, max_number)
    subject = template.subject or people[0]
    pronoun, poss = ("it", "its") if template.subject else NAMES[subject]
    fields = {"item": item, "Q": bystander, "poss": poss, "v": template.verb[0], "vb": template.verb[1]}
    sentences = [rng.choice(template.start).format(x=x, S=subject, A=subject, **fields)]
    steps: list[str] = []

    for i in range(n_steps):
        if i == distract_at:
            sentences.append(_distractor(rng, bystander, max_number))
        choices = {op: _operands(op, x, max_number, max_factor) for op in config.operations}
        feasible = [op for op in config.operations if choices[op]]
        if not feasible:
            return None, [], 0
        op = rng.choice(feasible)
        k = rng.choice(choices[op])
        if template.family == "stock":
            # A pronoun right after a sentence naming the bystander could mean them, so use the name there.
            use_name = template.subject is not None or bystander in sentences[-1] or rng.random() < 0.4
            q_fmt, r_fmt, expr_fmt = _stock_phrase(rng, template, op)
            names = {"S": subject if use_name else pronoun, "N": subject, "P": pronoun}
        else:
            q_fmt, r_fmt, expr_fmt = rng.choice(_COMPARE_PHRASES[op])
            names = {"A": people[i], "B": people[i + 1]}
        values = {"x": x, "k": k, "p": k, "q": 100 - k}
        expr = expr_fmt.format(**values)
        result = calculate(expr)
        new_x = _apply(op, x, k)
        if result != str(new_x):  # the calculator is the ground truth at decoding time; never disagree
            raise RuntimeError(f"calculator gave {result} for {expr}, expected {new_x}")
        calc = f"{expr} = <<{expr}={result}>>{result}"
        # Only a sentence that opens with its subject can take a connector ("Then she sells ...").
        connector = rng.choice(_CONNECTORS) if q_fmt.startswith("{S}") else ""
        sentences.append(_capitalise(connector + q_fmt.format(calc=calc, **values, **names, **fields)))
        steps.append(_capitalise(r_fmt.format(calc=calc, **values, **names, **fields)))
        x = new_x

    if distract_at == n_steps:
        sentences.append(_distractor(rng, bystander, max_number))
    last = subject if template.family == "stock" else people[n_steps]
    sentences.append(rng.choice(template.question).format(S=last, B=last, **fields))
    return " ".join(sentences), steps, x


def _stock_phrase(rng: random.Random, template: Template, op: str) -> tuple[str, str, str]:
    q_fmt, r_fmt, expr_fmt = rng.choice(_STOCK_PHRASES[op])
    if op in ("add", "sub"):
        clause = rng.choice(template.gains if op == "add" else template.losses)
        # The clause has its own fields ({k}, {item}, {Q}); splice it in before formatting the sentence.
        q_fmt, r_fmt = q_fmt.replace("{gain}", clause).replace("{loss}", clause), \
            r_fmt.replace("{gain}", clause).replace("{loss}", clause)
    return q_fmt, r_fmt, expr_fmt


def _operands(op: str, x: int, max_number: int, max_factor: int) -> range | list[int]:
    """The operands that keep every quantity an integer in [2, LIMIT); empty when op cannot apply to x.

    Quantities stay >= 2 so plurals read right and later steps always have something to work with.
    """
    if op == "add":
        return range(2, min(max_number, LIMIT - 1 - x) + 1)
    if op == "sub":
        return range(2, min(max_number, x - 2) + 1)
    if op == "mul":
        return range(2, min(max_factor, (LIMIT - 1) // x) + 1)
    if op == "div":
        return [k for k in range(2, max_factor + 1) if x % k == 0 and x // k >= 2]
    if op == "percent":
        return [p for p in PERCENTS if x * p % 100 == 0 and x * p // 100 >= 2]
    raise ConfigError(f"unknown operation {op!r}")


def _apply(op: str, x: int, k: int) -> int:
    return {"add": x + k, "sub": x - k, "mul": x * k, "div": x // k, "percent": x * k // 100}[op]


def _distractor(rng: random.Random, bystander: str, max_number: int) -> str:
    return rng.choice(DISTRACTORS).format(Q=bystander, n=rng.randint(2, max_number))


def _capitalise(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]
