"""Model folders: from-scratch presets (tokenizer + causal LM) and loading/validating Hugging Face checkpoints."""
