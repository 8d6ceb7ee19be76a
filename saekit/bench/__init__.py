"""Benchmarks: saekit and its anchor side by side in one process (`saekit bench NAME`)."""

BENCHES = {
    "mp": "saekit.bench.mp",
    "stream": "saekit.bench.stream",
    "synthetic": "saekit.bench.synthetic",
    "train": "saekit.bench.train",
    "snmf": "saekit.bench.snmf",
    "select": "saekit.bench.select",
    "kernels": "saekit.bench.kernels",
    "quality": "saekit.bench.quality",
}
"""`saekit bench NAME` → module with run(**kwargs) -> dict and table(dict) -> str."""
