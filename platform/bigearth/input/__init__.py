"""Stage 2, input: a shard set's split as batches: Ray Data rows (`raydata`), the training loader (`loader`), a
plain PyTorch dataset (`torchdata`), per-band statistics (`stats`) and the input benchmark (`benchmark`)."""
