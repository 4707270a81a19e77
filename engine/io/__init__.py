"""Storage I/O: filesystem access, atomic writes, JSON and parquet helpers."""
