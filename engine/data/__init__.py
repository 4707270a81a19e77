"""Preprocessing shared by score, train and evaluate (see transforms.py)."""
