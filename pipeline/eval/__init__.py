"""Frozen-encoder evaluation: features, kNN, linear probe, few-shot, cluster quality, and the
evaluate stage that runs them for MAMP and STARS (`evaluate.run_evaluate`)."""
