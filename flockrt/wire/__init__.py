"""What crosses a process: the msgspec Structs of the AI Flock messages, their codec, and the
NATS subjects they travel on. No I/O and no ``nats`` here: any room may import it."""
