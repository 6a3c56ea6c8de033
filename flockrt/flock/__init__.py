"""The flock: one interface for every implementation (in-process and over NATS), the dispatcher
that hands work to free agents, the in-process LocalFlock, and the agent directory."""
