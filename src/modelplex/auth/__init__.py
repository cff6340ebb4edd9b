"""Who is calling, and what they may do: one principal for API keys and bearer
tokens alike, checked in one place for REST and gRPC."""
