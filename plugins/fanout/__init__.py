"""Fanout: release one application to every region of a multi-region AKS fleet."""
