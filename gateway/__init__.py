"""The gRPC gateway: routing, the Redis response cache, resilience and access control."""
