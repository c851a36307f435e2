"""Integrations: EFL inside other frameworks' detectors."""
