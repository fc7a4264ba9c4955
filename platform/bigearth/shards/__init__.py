"""The shard set: the Parquet format and its manifest (`format`), the rules every reader asks (`shardset`),
single-page reads (`pages`) and random access to one pair by patch id (`patches`)."""
