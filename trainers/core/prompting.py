"""The one prompt format shared by training, sampling, serving and evaluation.

A question becomes `Question: ...\nAnswer:` and the model continues with ` <rationale>` ending in `#### N`
and EOS. Keeping it in one place is what lets a model trained by `sft` be sampled by `services` unchanged.
"""

PROMPT_TEMPLATE = "Question: {question}\nAnswer:"


def format_prompt(question: str) -> str:
    return PROMPT_TEMPLATE.format(question=question.strip())


def format_completion(rationale: str) -> str:
    """The training target for a prompt: a leading space, then the rationale (EOS is added by the trainer)."""
    return " " + rationale.strip()
