"""prunestudy: hyperparameter-search studies of neural-network pruning methods."""
