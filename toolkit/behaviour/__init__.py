"""Behaviour: greedy generation and the response classifiers."""
