"""The math core: answer parsing, the safe calculator, dedup, preference pairs, metrics and the prompt format.
Pure Python on strings and numbers, shared by sampling, labelling, serving, evaluation and benchmarks."""
