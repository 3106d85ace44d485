"""The domain model: plain dataclasses, free of gRPC, protobuf and drivers."""
