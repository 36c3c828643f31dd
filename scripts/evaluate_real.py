"""Detection on a real access log: the public Apache log of tests/data/real/elastic-apache-2015.

    python3 scripts/evaluate_real.py GATEWATCH_BINARY OUT_DIR [MODEL_DIR]

Labels (per client address; README.md next to the log says how far to trust them):

- `declared bot`: the address sent at least one request whose user agent declares an
  automated client (bot, crawler, spider, feed reader, HTTP library, monitor), or fetched
  /robots.txt;
- `other`: every other address: browsers, and bots that pretend to be browsers.

The user agent is blanked before gatewatch reads the log (and no feature reads it anyway);
/robots.txt stays a visible endpoint, so the `robots.txt` half of the label is one the
features can see (the figures are also given for user-agent labels alone).

Two models: the built-in default (fitted on simulated traffic), and one self-calibrated on
the site's own first two days, unlabelled, bots included (`gatewatch train` with no
`--label`), both scored on the last 1.5 days. Per address: the maximum score of its
requests in the scored period; ROC-AUC of declared bots against the others (ties count
half), the share of each group the model flags (a member at its threshold), and the
largest score's spread (how many addresses share the top score).
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

LOG = Path(__file__).resolve().parent.parent / "tests/data/real/elastic-apache-2015/apache_logs.gz"
LINE = re.compile(
    r'^(?P<ip>\S+) \S+ \S+ \[(?P<time>[^\]]+)\] "(?P<req>[^"]*)" (?P<status>\d{3}) (?P<bytes>\S+)'
    r' "(?P<ref>[^"]*)" "(?P<ua>[^"\n]*)"?'
)
BOT_UA = re.compile(
    r"bot|crawl|spider|slurp|feed|rss|fetch|wget|curl|python|java/|libwww|perl|ruby|go-http|"
    r"scrapy|httpclient|monitor|check|archiver|scan|yahoo|baidu|yandex|bing|tiny tiny",
    re.IGNORECASE,
)
# The scored period starts here (the first 2 of 3.5 days fit the self-calibrated model).
SPLIT = datetime(2015, 5, 19, 10, 0, tzinfo=UTC)


def prepare(out: Path) -> tuple[Path, Path, dict[str, dict[str, bool]], int]:
    """Writes the log in time order with blank user agents, whole and the training part;
    returns the labels per address and the count of lines that were not combined-log lines."""
    rows = []
    labels: dict[str, dict[str, bool]] = defaultdict(lambda: {"ua": False, "robots": False})
    skipped = 0
    with gzip.open(LOG, "rt", encoding="utf-8", errors="replace", newline="\n") as f:
        for n, line in enumerate(f):
            m = LINE.match(line)
            if not m:
                skipped += 1
                continue
            t = datetime.strptime(m["time"], "%d/%b/%Y:%H:%M:%S %z")
            lab = labels[m["ip"]]
            lab["ua"] |= bool(BOT_UA.search(m["ua"]))
            lab["robots"] |= "/robots.txt" in m["req"]
            blank = line[: m.start("ua")] + "-" + line[m.end("ua") :]
            rows.append((t, n, blank))
    rows.sort()
    whole, train = out / "apache.log", out / "apache-train.log"
    with whole.open("w") as w, train.open("w") as tr:
        for t, _, line in rows:
            w.write(line)
            if t < SPLIT:
                tr.write(line)
    return whole, train, dict(labels), skipped


def per_client(scores: Path) -> dict[str, tuple[float, bool]]:
    best: dict[str, tuple[float, bool]] = {}
    with scores.open() as f:
        for line in f:
            r = json.loads(line)
            ts = datetime.strptime(r["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
            if ts < SPLIT:
                continue
            client = r["client"].removeprefix("ip:")
            s, flagged = best.get(client, (0.0, False))
            best[client] = (max(s, r["score"]), flagged or r["flagged"])
    return best


def auc(pos: list[float], neg: list[float]) -> float:
    ranked = sorted([(s, 1) for s in pos] + [(s, 0) for s in neg])
    # Mann-Whitney U with mid-ranks for ties.
    rank_sum, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        mid = (i + j + 1) / 2
        rank_sum += mid * sum(1 for k in range(i, j) if ranked[k][1] == 1)
        i = j
    return (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def row(name: str, best: dict[str, tuple[float, bool]], labels: dict[str, dict[str, bool]]) -> str:
    cells = []
    for key in (("ua", "robots"), ("ua",)):
        pos = [best[c][0] for c in best if any(labels[c][k] for k in key)]
        neg = [best[c][0] for c in best if not any(labels[c][k] for k in key)]
        cells.append(f"{auc(pos, neg):.2f}")
    bots = [c for c in best if labels[c]["ua"] or labels[c]["robots"]]
    other = [c for c in best if c not in set(bots)]
    flag_b = sum(best[c][1] for c in bots) / len(bots)
    flag_o = sum(best[c][1] for c in other) / len(other)
    # The model's own flag as a robot call: precision, recall and F1 against declared bots.
    tp = sum(best[c][1] for c in bots)
    fp = sum(best[c][1] for c in other)
    f1 = 2 * tp / max(1, 2 * tp + fp + (len(bots) - tp))
    top = max(s for s, _ in best.values())
    at_top = sum(1 for s, _ in best.values() if s == top)
    return (
        f"| {name} | {len(bots)} / {len(other)} | {cells[0]} | {cells[1]} | {flag_b:.1%} | "
        f"{flag_o:.1%} | {f1:.2f} | {at_top} at {top:.6f} |"
    )


def main() -> None:
    binary, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    whole, train, labels, skipped = prepare(out)
    calibrated = out / "self-calibrated"
    subprocess.run(
        [binary, "train", "--format", "combined", "-i", str(train), "-o", str(calibrated)],
        check=True,
        stderr=subprocess.DEVNULL,
    )
    first: tuple[str, list[str]] = ("default (simulated traffic)", [])
    if len(sys.argv) > 3:
        first = (f"model {sys.argv[3]}", ["--model", sys.argv[3]])
    models = [first, ("self-calibrated", ["--model", str(calibrated)])]
    print(
        "| model | clients: declared bots / other | ROC-AUC | ROC-AUC (user-agent labels) "
        "| bots flagged | other flagged | F1 of the flag | top score |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, extra in models:
        scores = out / f"scores-{name.split()[0].replace('/', '_')}.ndjson"
        subprocess.run(
            [
                binary,
                "score",
                *extra,
                "--format=combined",
                "--reasons=0",
                f"-i{whole}",
                f"-o{scores}",
            ],
            check=True,
            stderr=subprocess.DEVNULL,
        )
        print(row(name, per_client(scores), labels))
    if skipped:
        print(f"\n{skipped} lines were not combined-log lines")


if __name__ == "__main__":
    main()
