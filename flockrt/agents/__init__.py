"""Agents: actors with skills (capabilities and task types) that a flock routes work to, the
decorators that declare those skills, the pieces of work a flock hands over, and the built-in
agents. Agents reach their flock through the small Protocols of :mod:`flockrt.agents.ports`."""
