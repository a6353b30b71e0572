"""The `synthesis:` section of a run config: what the problem synthesizer learns from, how many problems it
writes, how they are filtered and when a self-consistency label is trusted."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from trainers.engine.decoding import MAX_NEW_TOKENS


class SynthesisConfig(BaseModel):
    """JiuZhang3.0-style problem synthesis for the self-training loop (docs/architecture.md, "Synthesis")."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Train a synthesizer and add its filtered, vote-labelled problems "
                                             "to U each iteration.")
    problems_per_iteration: int = Field(200, ge=1, description="Problems the synthesizer writes per iteration, "
                                                               "before any filter.")
    seed_texts: list[str] = Field(default_factory=list, description=(
        "UTF-8 text files of math material; each blank-line-separated paragraph is one seed text. Their "
        "excerpts join the labeled questions' as prompts; an empty or non-UTF-8 file is a one-line error."))
    seed_chars: int = Field(60, ge=10, le=2000, description=(
        "A seed excerpt is the first this-many characters of a seed text, cut back to a word boundary."))
    synthesizer_path: str | None = Field(None, description=(
        "HF folder the synthesizer is fine-tuned from; default: the run's base model f0."))
    train: bool = Field(True, description=(
        "Fine-tune the synthesizer. false: `synthesizer_path` (then required) is an already trained "
        "synthesizer, recorded as stage `synthesizer` as is, without training."))
    train_steps: int = Field(200, ge=1, description="SFT steps that teach the synthesizer the prompt format.")
    learning_rate: float | None = Field(None, gt=0, le=1, description=(
        "The synthesizer's SFT learning rate; default: training.sft's (its other TRL fields are those too)."))
    temperature: float = Field(0.8, gt=0, le=2, description="Sampling temperature for writing problems.")
    max_new_tokens: int = Field(MAX_NEW_TOKENS, ge=16, le=4096,
                                description="Most tokens of one written problem and its solution.")
    min_question_words: int = Field(5, ge=1, description="Length filter: fewest words in a question.")
    max_question_words: int = Field(150, ge=1, description="Length filter: most words in a question.")
    max_rationale_words: int = Field(300, ge=1, description="Length filter: most words in a solution.")
    dedup_threshold: float = Field(0.8, ge=0, le=1, description=(
        "Near-duplicate filter: a question whose word-set Jaccard similarity to a labeled question or an "
        "earlier kept one is at least this is dropped (trainers/core/dedup.py)."))
    ngram: int = Field(10, ge=1, le=100, description=(
        "Decontamination: a question sharing any word n-gram of this length (lowercased, punctuation "
        "ignored) with a dev or test question is dropped."))
    samples_per_question: int = Field(8, ge=1, le=64, description=(
        "k: answers the current policy samples per kept question for its self-consistency label."))
    vote_threshold: float = Field(0.6, gt=0, le=1, description=(
        "A question keeps its majority answer as label when that answer's share of the k samples is at "
        "least this, in (0, 1]; otherwise it is dropped."))

    @model_validator(mode="after")
    def _bounds_in_order(self) -> "SynthesisConfig":
        if self.min_question_words > self.max_question_words:
            raise ValueError(f"min_question_words ({self.min_question_words}) is above max_question_words "
                             f"({self.max_question_words})")
        if not self.train and not self.synthesizer_path:
            raise ValueError("train: false needs synthesizer_path, the trained synthesizer to use as is")
        return self
