#!/usr/bin/env python3
"""Writes a raw disk image of mixed content for benchmarks: in every 10 MiB, 4 MiB of
random bytes, 3 MiB of compressible text and 3 MiB of zeros. Every MiB differs, so
deduplication does not flatter anyone.

usage: mkimage.py OUT SIZE_MIB [SEED]
       mkimage.py --mutate IN OUT PERCENT SEED   (copy IN, rewriting PERCENT% of its
                                                  MiBs with new content of their kind)
"""
import os
import random
import sys

MIB = 1 << 20
WORDS = (
    "the of and to in is for on that with as by at from kernel module disk block "
    "partition boot loader init system service network address config file path "
    "user root etc usr lib share bin var log cache data image chunk manifest"
).split()


def text_mib(rng):
    out = bytearray()
    while len(out) < MIB:
        line = " ".join(rng.choices(WORDS, k=12)) + " %d\n" % rng.randrange(1 << 30)
        out += line.encode()
    return bytes(out[:MIB])


def make(path, size_mib, seed):
    rng = random.Random(seed)
    with open(path, "wb") as f:
        for i in range(size_mib):
            kind = i % 10
            if kind < 4:
                f.write(os.urandom(MIB))
            elif kind < 7:
                f.write(text_mib(rng))
            else:
                f.seek(MIB, os.SEEK_CUR)
        f.truncate(size_mib * MIB)


def mutate(src, dst, percent, seed):
    """A changed MiB gets new content of its own kind, as an update's new files
    compress like the old: random bytes stay random, text becomes other text,
    and free space (zeros) gets text, a new file written there."""
    rng = random.Random(seed)
    with open(src, "rb") as f_in, open(dst, "wb") as f_out:
        size = os.fstat(f_in.fileno()).st_size
        n = size // MIB
        changed = set(rng.sample(range(n), max(1, n * percent // 100)))
        for i in range(n):
            block = f_in.read(MIB)
            if i in changed:
                block = os.urandom(MIB) if i % 10 < 4 else text_mib(rng)
            if block.count(0) == MIB:
                f_out.seek(MIB, os.SEEK_CUR)
            else:
                f_out.write(block)
        f_out.truncate(size)
    print(len(changed))


if __name__ == "__main__":
    if sys.argv[1] == "--mutate":
        mutate(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        make(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 1)
