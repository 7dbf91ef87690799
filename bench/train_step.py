"""PyTorch side of bench/train_step: the same two nets, batch and SGD step, timed the
same way (warm-up, then every step timed on its own), with the same memory figure.

    /usr/bin/python3 bench/train_step.py NET THREADS WARMUP STEPS

NET is convnet or unet. Prints one line: "wall:cpu wall:cpu ... | peak_bytes
rss_bytes", the wall-clock and CPU (all threads) milliseconds of every timed step,
then the peak resident memory above what the process held before its first step, and
the resident memory at that point.
"""
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


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


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.gn1 = nn.GroupNorm(8, 32)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.gn2 = nn.GroupNorm(8, 64)
        self.fc = nn.Linear(64 * 7 * 7, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.gn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.gn2(self.conv2(x))), 2)
        return self.fc(x.flatten(1))


def block(cin, cout):
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.ReLU())


class UNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc1, self.enc2, self.mid = block(3, 16), block(16, 32), block(32, 64)
        self.dec2, self.dec1 = block(96, 32), block(48, 16)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        mid = self.mid(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([F.interpolate(mid, scale_factor=2), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2), e1], 1))
        return self.head(d1)


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
