"""Peak FLOP/s of the GPUs whose data sheets we know, for MFU."""

from __future__ import annotations

# Dense peak FLOP/s by GPU name fragment, from the vendors' data sheets, for MFU: bf16/fp16 tensor cores;
# float32 on TF32 tensor cores ("tf32") when TF32 is enabled, else plain FP32 ("float32").
PEAK_FLOPS = {
    "H200": {"bfloat16": 989.4e12, "float16": 989.4e12, "tf32": 494.7e12, "float32": 66.9e12},
    "H100 SXM": {"bfloat16": 989.4e12, "float16": 989.4e12, "tf32": 494.7e12, "float32": 66.9e12},
    "H100 80GB HBM3": {"bfloat16": 989.4e12, "float16": 989.4e12, "tf32": 494.7e12, "float32": 66.9e12},
    "H100 PCIe": {"bfloat16": 756.0e12, "float16": 756.0e12, "tf32": 378.0e12, "float32": 51.2e12},
    "A100": {"bfloat16": 312.0e12, "float16": 312.0e12, "tf32": 156.0e12, "float32": 19.5e12},
}


def peak_flops(gpu_name: str | None, dtype: str, tf32: bool = False) -> float | None:
    """Peak dense FLOP/s of what really runs, for MFU: float32 counts the TF32 peak only when TF32 is on.
    None when the GPU (or the CPU) is not in the table."""
    if not gpu_name:
        return None
    key = "tf32" if dtype == "float32" and tf32 else dtype
    for fragment, table in PEAK_FLOPS.items():
        if fragment in gpu_name:
            return table.get(key)
    return None
