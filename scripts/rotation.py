"""Writes NDJSON events whose client keys (or raw paths) never repeat: key rotation.

    python3 scripts/rotation.py N [clients|paths] [INTERVAL_MS] > events.ndjson

`clients`: N events from N distinct addresses (labelled `normal` / `rot`), one every
INTERVAL_MS (100: ten per second);
`paths`: N events from one address, each to its own literal path. Used by `scripts/bench
memory` to show that memory stays flat whatever the number of distinct keys.
"""

import sys


def main() -> None:
    n = int(sys.argv[1])
    mode = sys.argv[2] if len(sys.argv) > 2 else "clients"
    interval = float(sys.argv[3]) if len(sys.argv) > 3 else 100.0
    t0 = 1_767_225_600_000
    out = sys.stdout
    buf = []
    for i in range(n):
        ts = t0 + int(i * interval)
        if mode == "paths":
            ip, path = "198.51.100.7", f"/files/report-{i:x}-final"
        else:
            ip, path = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", "/login"
        label = "rot" if i % 2 else "normal"
        buf.append(
            f'{{"ts":{ts},"client_ip":"{ip}","method":"POST","path":"{path}",'
            f'"status":401,"label":"{label}-{i % 7}"}}\n'
        )
        if len(buf) >= 10_000:
            out.write("".join(buf))
            buf.clear()
    out.write("".join(buf))


if __name__ == "__main__":
    main()
