"""Generated protobuf and grpclib code. Do not edit: run python -m chalkd.dev.protogen."""
