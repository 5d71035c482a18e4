"""tviz's own Llama-family transformer, its weights and its tokenizer."""
