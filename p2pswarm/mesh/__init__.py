"""The routing mesh: every node accepts connections on every published port and forwards
them to a healthy replica (see docs/architecture.md, "Routing mesh")."""
