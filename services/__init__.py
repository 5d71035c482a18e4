"""The model replica service: tviz.v1.Generation around vLLM (or tviz's reference engine)."""
