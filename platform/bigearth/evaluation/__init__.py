"""Stage 4, evaluation: a checkpoint on a split (`classification`) and the reBEN table (`reproduce`)."""
