"""Writes --mib MiB of text lines to stdout as fast as it can: figure 6's writer.

The lines are 100 bytes (the last one of each MiB shorter), written with
os.write in 1 MiB blocks, so the writer is never the bottleneck.
"""
import argparse
import os

parser = argparse.ArgumentParser()
parser.add_argument("--mib", type=int, required=True)
args, _ = parser.parse_known_args()

MIB = 1 << 20
lines = [b"%08d the quick brown fox jumps over the lazy dog 0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGH\n" % i
         for i in range(MIB // 100)]
block = b"".join(lines)
block += b"y" * (MIB - len(block) - 1) + b"\n"
assert len(block) == MIB and all(len(line) == 100 for line in lines)
view = memoryview(block)
for _ in range(args.mib):
    rest = view
    while rest:
        rest = rest[os.write(1, rest):]
