"""The base model: embedded, GGUF or hub; 4-bit load, LoRA wrap, label head, CPU dropout, precision."""
