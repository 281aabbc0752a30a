"""The embedded default fleet: real local control planes, registries, a Traffic Manager
stand-in, edge endpoints and fault knobs, all running as plain local processes."""
