"""Where the forward pass runs: cuda > mps > cpu, or the LLAMA3_DEVICE variable. Chosen once, at import."""
import os

import torch


def available_devices():
    """What this machine offers, for error messages: e.g. ['cpu', 'cuda:0']."""
    out = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return out + ["mps"] if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else out


def cpuinfo(key):
    """The first value of key in /proc/cpuinfo ('vendor_id': 'AuthenticAMD'; 'model name'), or '' where none."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_vendor():
    """'AuthenticAMD', 'GenuineIntel', ..., or '' off Linux."""
    return cpuinfo("vendor_id")


# PyTorch's CPU kernel families (ATEN_CPU_CAPABILITY) and the CPU flags each needs; asking for a family the CPU
# lacks is not checked by PyTorch 2.13 and dies with "Illegal instruction"
FAMILIES = {"avx512": ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx2", "fma"), "avx2": ("avx2", "fma"),
            "default": ()}


def kernel_families(flags=None):
    """The ATEN_CPU_CAPABILITY values this CPU can run, fastest first (flags: /proc/cpuinfo's line by default)."""
    have = set((cpuinfo("flags") if flags is None else flags).split())
    return [name for name, need in FAMILIES.items() if have.issuperset(need)]


def pick_device(value=None):
    """cuda > mps > cpu, unless value (default: the LLAMA3_DEVICE variable) names one. Chosen once, at import."""
    value = os.environ.get("LLAMA3_DEVICE", "") if value is None else value
    if value:
        why = "is not a device name"
        try:
            dev = torch.device(str(value).strip().lower())
            ok = dev.type == "cpu" or (dev.type == "cuda" and (dev.index or 0) < torch.cuda.device_count()) \
                or (dev.type == "mps" and "mps" in available_devices())
            why = "is not available on this machine"
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"LLAMA3_DEVICE={value!r} {why}: use cpu, cuda, cuda:N or mps (available here: "
                             f"{', '.join(available_devices())}), or unset it to pick the best automatically")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


DEVICE = pick_device()


if __name__ == "__main__":  # `python -m helpers.device`: the kernel families, for .ci/run
    print(*kernel_families())
