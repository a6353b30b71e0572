"""Problem synthesis (JiuZhang3.0, Zhou et al. 2024): a small model taught to write new problems with solutions
from a seed excerpt and a level/topic tag, whose output is filtered and labelled by self-consistency before it
joins the unlabeled pool U.

    prompts.py   seed texts, tags, the synthesizer's prompt and training examples, parsing what it writes
    filters.py   parseable -> calculator -> final answer -> length -> dedup -> decontamination, counted
    labels.py    majority-vote labels with a threshold, label accuracy per vote-share bucket, U rows
    pipeline.py  write_problems and vote_on: the two decoding steps, through any decode_fn
    config.py    the `synthesis:` config section
"""
