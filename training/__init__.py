"""Training: the one trainer, the T5 tagger, and the TF-IDF baseline."""
