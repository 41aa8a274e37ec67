"""The toy world: synthetic problems, a character tokenizer and a tiny Qwen2 model."""
