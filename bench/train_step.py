"""PyTorch side of bench/train_step: the same two nets, batch and SGD step, timed the
same way (warm-up, then every step timed on its own), with the same memory figure.

    /usr/bin/python3 bench/train_step.py NET THREADS WARMUP STEPS

NET is convnet or unet. Prints one line: "wall:cpu wall:cpu ... | peak_bytes
rss_bytes", the wall-clock and CPU (all threads) milliseconds of every timed step,
then the peak resident memory above what the process held before its first step, and
the resident memory at that point.
The nets are examples/pytorch_reference.py's, the twins of examples/nets.c.
"""
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
from pytorch_reference import MnistNet as ConvNet, UNet  # noqa: E402


def vm_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak():
    """Sets VmHWM to the current VmRSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def main():
    net, threads, warmup, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(
        sys.argv[4])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if net == "convnet":
        model, x = ConvNet(), torch.randn(64, 1, 28, 28)
        y = torch.randint(0, 10, (64,))
    else:
        model, x = UNet(), torch.randn(8, 3, 64, 64)
        y = torch.randint(0, 4, (8, 64, 64))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    rss = vm_kib("VmRSS")
    reset_peak()
    times = []
    for i in range(warmup + steps):
        t0, c0 = time.perf_counter(), time.process_time()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        del loss
        if i >= warmup:
            times.append((time.perf_counter() - t0, time.process_time() - c0))
    peak = vm_kib("VmHWM") - rss
    print(" ".join("%.4f:%.4f" % (t * 1e3, c * 1e3) for t, c in times), "|", peak * 1024,
          rss * 1024, flush=True)


if __name__ == "__main__":
    main()
