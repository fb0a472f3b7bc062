"""Thin layers that keep older systems' names working on top of corral."""
