"""Azure Monitor's counterpart for the local fleet: a real Prometheus that scrapes the edges."""
