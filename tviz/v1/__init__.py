"""Generated gRPC code for package tviz.v1 (run `python -m tviz.codegen`; not committed)."""
