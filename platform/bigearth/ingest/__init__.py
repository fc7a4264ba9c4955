"""Stage 1, ingest: an archive (v1 or v2, extracted or as the published downloads) into a shard set (`job`), its
unit of work on one shard (`shard`), its accounting of the shard reports (`accounting`), its download side
(`downloads`)."""
