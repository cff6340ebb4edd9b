"""The gRPC adapter: `inference.GRPCInferenceService` over the data plane."""
