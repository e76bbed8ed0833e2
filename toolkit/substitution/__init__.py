"""Substitution: the trigger lexicon, word units, model-embedding neighbours and rewrites."""
