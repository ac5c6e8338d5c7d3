#!/usr/bin/env python3
"""A strict reader of the Prometheus text exposition format 0.0.4, for tests/serve/metrics.sh.

usage: prom.py check FILE            exit 0 when FILE parses and is consistent, else the reasons
       prom.py sum FILE NAME [K=V]...  the sum of NAME's samples whose labels match (0 if none)

"check" holds a scrape to what Prometheus itself requires and a bit more: each family's HELP and
TYPE once, before its samples; counters named *_total; label sets well formed and not repeated;
values numbers; every histogram series with ascending le buckets ending in +Inf, cumulative
(never decreasing), +Inf equal to _count, and a _sum.
"""
import math
import re
import sys

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"'
SAMPLE = re.compile(r"^(" + NAME + r")(\{(.*)\})? (\S+)( -?\d+)?$")


def parse_labels(text):
    labels, pos = {}, 0
    while pos < len(text):
        m = re.compile(LABEL).match(text, pos)
        if not m:
            raise ValueError("malformed labels {%s}" % text)
        if m.group(1) in labels:
            raise ValueError("label %s twice" % m.group(1))
        labels[m.group(1)] = m.group(2)
        pos = m.end()
        if pos < len(text):
            if text[pos] != ",":
                raise ValueError("malformed labels {%s}" % text)
            pos += 1
    return labels


def parse(path):
    """Returns (samples, errors): samples as (name, labels dict, value)."""
    types, helps, samples, errors, seen = {}, {}, [], [], set()
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if text and not text.endswith("\n"):
        errors.append("the last line has no newline")
    for no, line in enumerate(text.splitlines(), 1):
        if not line:
            errors.append("line %d: empty" % no)
            continue
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                kind, name = parts[1], parts[2]
                table = helps if kind == "HELP" else types
                if name in table:
                    errors.append("line %d: second %s for %s" % (no, kind, name))
                if kind == "TYPE":
                    t = parts[3] if len(parts) > 3 else ""
                    if t not in ("counter", "gauge", "histogram", "summary", "untyped"):
                        errors.append("line %d: unknown type %r" % (no, t))
                    if t == "counter" and not name.endswith("_total"):
                        errors.append("line %d: counter %s does not end in _total" % (no, name))
                    if any(s[0] == name or s[0].startswith(name + "_") for s in samples):
                        errors.append("line %d: TYPE of %s after its samples" % (no, name))
                    table[name] = t
                else:
                    table[name] = parts[3] if len(parts) > 3 else ""
            continue
        m = SAMPLE.match(line)
        if not m:
            errors.append("line %d: not a sample: %r" % (no, line))
            continue
        name, labels_text, value = m.group(1), m.group(3) or "", m.group(4)
        try:
            labels = parse_labels(labels_text)
            v = float(value)
        except ValueError as e:
            errors.append("line %d: %s" % (no, e))
            continue
        family = name
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and types.get(name[: -len(suffix)]) == "histogram":
                family = name[: -len(suffix)]
        if family not in types:
            errors.append("line %d: %s has no TYPE before it" % (no, name))
        elif family not in helps:
            errors.append("line %d: %s has no HELP" % (no, name))
        key = (name, tuple(sorted(labels.items())))
        if key in seen:
            errors.append("line %d: %s%s a second time" % (no, name, labels))
        seen.add(key)
        if types.get(family) == "counter" and (v < 0 or math.isnan(v)):
            errors.append("line %d: counter %s is %s" % (no, name, value))
        samples.append((name, labels, v))
    # Histograms: per series (labels without le).
    for family, t in types.items():
        if t != "histogram":
            continue
        series = {}
        for name, labels, v in samples:
            if name.startswith(family + "_"):
                rest = tuple(sorted((k, x) for k, x in labels.items() if k != "le"))
                series.setdefault(rest, {"buckets": [], "sum": None, "count": None})
                s = series[rest]
                if name == family + "_bucket":
                    s["buckets"].append((labels.get("le"), v))
                elif name == family + "_sum":
                    s["sum"] = v
                elif name == family + "_count":
                    s["count"] = v
        for rest, s in series.items():
            where = "%s%s" % (family, dict(rest))
            les = [le for le, _ in s["buckets"]]
            if not les or les[-1] != "+Inf":
                errors.append("%s: the last bucket is not +Inf" % where)
                continue
            try:
                bounds = [float(le) for le in les]
            except (TypeError, ValueError):
                errors.append("%s: a bucket without a numeric le" % where)
                continue
            if bounds != sorted(bounds) or len(set(bounds)) != len(bounds):
                errors.append("%s: le not ascending" % where)
            counts = [v for _, v in s["buckets"]]
            if any(b < a for a, b in zip(counts, counts[1:])):
                errors.append("%s: buckets not cumulative: %s" % (where, counts))
            if s["count"] is None or s["sum"] is None:
                errors.append("%s: no _count or no _sum" % where)
            elif counts[-1] != s["count"]:
                errors.append("%s: +Inf bucket %s != _count %s" % (where, counts[-1], s["count"]))
    return samples, errors


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "check":
        _, errors = parse(sys.argv[2])
        for e in errors:
            print(e)
        return 1 if errors else 0
    if len(sys.argv) >= 4 and sys.argv[1] == "sum":
        samples, _ = parse(sys.argv[2])
        want = dict(a.split("=", 1) for a in sys.argv[4:])
        total = sum(v for n, l, v in samples
                    if n == sys.argv[3] and all(l.get(k) == x for k, x in want.items()))
        print(int(total) if total == int(total) else total)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
