"""Evaluation of generated text: parse and score tool calls (pure Python, no torch, so it runs anywhere)."""
