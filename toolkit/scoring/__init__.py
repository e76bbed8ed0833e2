"""Scoring: batched refusal margins on a shared prefix cache, variant scoring, refusal thresholds."""
