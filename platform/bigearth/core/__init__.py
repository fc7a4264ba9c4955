"""The foundations every stage stands on: bands, labels (nomenclatures), storage (fsspec URLs and S3 options),
records written whole, one writer per output, secrets, quicklooks. Nothing here imports another stage."""
