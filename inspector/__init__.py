"""The inspector: tviz's instrumented transformer on the weights the replicas serve."""
