#!/usr/bin/env python3
"""The README's performance table, condensed from a full run's results:
`python3 bench/readme_table.py [bench/results/latest.json]` prints it (Markdown).

Medians only (latest.md has the spreads and every row); 16 / 64 connections side by side;
each bar (pass / fail) and each goal of the performance work (met / missed) beside the
figure it judges.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import report  # noqa: E402  (the goals' thresholds, one place)
SHORT = {"bare-gunicorn": "bare", "seed-style": "seed", "official-toolkit": "toolkit", "nginx-static": "nginx"}


def med(stat: Optional[Dict]) -> Optional[float]:
    return None if not stat else stat.get("median")


def num(value: Optional[float], fmt: str = "{:,.0f}") -> str:
    return "n/a" if value is None else fmt.format(value)


def both(values: List[Optional[float]], fmt: str = "{:,.0f}", unit: str = "") -> str:
    return " / ".join(num(v, fmt) + unit for v in values)


def verdict(ok: Optional[bool], goal: bool) -> str:
    if ok is None:
        return "n/a"
    return ("met" if ok else "missed") if goal else ("pass" if ok else "fail")


def verdicts(oks: List[Optional[bool]], goal: bool) -> str:
    words = [verdict(ok, goal) for ok in oks]
    return words[0] if len(set(words)) == 1 else " / ".join(words)


def build(document: Dict) -> str:
    figures = document["figures"]
    rows: List[List[str]] = []

    def row(number: str, figure: str, mine: str, others: str = "", judged: str = "", result: str = "") -> None:
        rows.append([number, figure, mine, others, judged, result])

    tp = figures.get("throughput", {})
    if "16" in tp and "64" in tp:
        c16, c64 = tp["16"], tp["64"]
        peers = [n for n in c16 if n not in ("smsuper", "ratios", "cpu_ratios", "smsuper-no-metrics")]
        row("1", "`/invocations` req/s, trivial model, 16 / 64 conns",
            both([med(c16["smsuper"]["rps"]), med(c64["smsuper"]["rps"])]),
            " · ".join(f"{SHORT.get(n, n)} {both([med(c16[n]['rps']), med(c64[n]['rps'])])}" for n in peers
                       if n != "nginx-static"))
        for peer, bar, bar_ok, goal, goal_ok in (
                ("bare-gunicorn", "≥ 0.8×", lambda r: r >= 0.8, "", None),
                ("seed-style", "> 1×", lambda r: r > 1.0, "≥ 1.3×", lambda r: r >= 1.3),
                ("official-toolkit", "", None, "≥ 1×", lambda r: r >= 1.0)):
            ratios = [med(c["ratios"].get(f"smsuper/{peer}")) for c in (c16, c64)]
            if all(r is None for r in ratios):
                continue
            judged, result = [], []
            if bar:
                judged.append(f"bar {bar}")
                result.append(verdicts([None if r is None else bar_ok(r) for r in ratios], False))
            if goal:
                judged.append(f"goal {goal}")
                result.append(verdicts([None if r is None else goal_ok(r) for r in ratios], True))
            row("1", f"ratio to {SHORT[peer]}, 16 / 64 conns (per round, median)", both(ratios, "{:.2f}", "×"), "",
                "; ".join(judged), "; ".join(result))
        row("1", "p50 / p99 ms, 16 conns · 64 conns",
            f"{num(med(c16['smsuper']['p50_ms']), '{:.1f}')} / {num(med(c16['smsuper']['p99_ms']), '{:.1f}')} · "
            f"{num(med(c64['smsuper']['p50_ms']), '{:.1f}')} / {num(med(c64['smsuper']['p99_ms']), '{:.1f}')}",
            "; ".join(f"{SHORT.get(n, n)} {num(med(c16[n]['p50_ms']), '{:.1f}')} / {num(med(c16[n]['p99_ms']), '{:.1f}')}"
                      f" · {num(med(c64[n]['p50_ms']), '{:.1f}')} / {num(med(c64[n]['p99_ms']), '{:.1f}')}"
                      for n in peers if n != "nginx-static"))
        cpu = [med(c["cpu_ratios"].get("smsuper/bare-gunicorn")) for c in (c16, c64)]
        row("1", "server CPU µs per request, 16 / 64 conns (metrics on)",
            both([med(c16["smsuper"]["server_cpu_us_per_request"]), med(c64["smsuper"]["server_cpu_us_per_request"])]),
            " · ".join(f"{SHORT.get(n, n)} {both([med(c16[n]['server_cpu_us_per_request']), med(c64[n]['server_cpu_us_per_request'])])}"
                       for n in ["smsuper-no-metrics"] + peers if n in c16 and n != "nginx-static")
            .replace("smsuper-no-metrics", "without metrics"),
            f"goal ≤ 0.85× bare ({both(cpu, '{:.2f}', '×')})",
            verdicts([None if r is None else r <= 0.85 for r in cpu], True))

    ping = figures.get("ping_busy", {})
    if "smsuper" in ping:
        mine, seed = ping["smsuper"], ping.get("seed-style", {})
        row("2", "`/ping` p99 / max while both workers run 1 s predictions",
            f"{num(med(mine['p99_ms']), '{:.1f}')} ms / {num(mine['max_ms'], '{:.0f}')} ms",
            f"seed p99 {num(med(seed.get('p99_ms')), '{:,.0f}')} ms" if seed else "",
            "bar p99 < 50 ms, none > 2 s",
            verdict(med(mine["p99_ms"]) < 50 and mine["over_2s"] == 0 and mine["failures"] == 0, False))

    start = figures.get("start_memory", {})
    if "smsuper" in start:
        warm = med(start["smsuper"]["start_s"])
        seed = med(start.get("seed-style", {}).get("start_s"))
        others = " · ".join(f"{SHORT.get(n, n)} {num(med(start[n]['start_s']), '{:.3f}')} s"
                            for n in ("bare-gunicorn", "seed-style", "official-toolkit") if "start_s" in start.get(n, {}))
        row("3", "start to first `/ping` 200 (warm cache / first start ever)",
            f"{num(warm, '{:.3f}')} s / {num(med(start['smsuper-cold']['start_s']), '{:.3f}')} s", others,
            f"bar < 1 s; goal ≤ seed ({num(None if seed is None else warm / seed, '{:.2f}')}×)",
            f"{verdict(warm < 1, False)}; {verdict(None if seed is None else warm <= seed, True)}")
        if "first_invocation_s" in start.get("official-toolkit", {}):
            row("3", "start to first `/invocations` 200", f"{num(med(start['smsuper']['first_invocation_s']), '{:.3f}')} s",
                " · ".join(f"{SHORT.get(n, n)} {num(med(start[n]['first_invocation_s']), '{:.3f}')} s"
                           for n in ("bare-gunicorn", "seed-style", "official-toolkit")
                           if "first_invocation_s" in start.get(n, {})),
                "(the toolkit's `/ping` is 200 before its model is loaded)")
        memory = start["smsuper"]["memory"]
        after_load = figures.get("pid1_after_load", {}).get("pid1_rss_mib", 0)
        scraped = figures.get("metrics_scrape", {}).get("pid1_rss_mib_after") or 0
        worst = max(med(memory["pid1_rss_mib"]), after_load, scraped)
        row("4", "PID 1 RSS, at rest / the largest after load and 1,000 worker restarts",
            f"{num(med(memory['pid1_rss_mib']), '{:.1f}')} / {worst:.1f} MiB",
            f"PID 1 USS {num(med(memory['pid1_uss_mib']), '{:.1f}')} MiB",
            "bar < 20 MB; goal ≤ 13 MiB", f"{verdict(worst < 20e6 / 2 ** 20, False)}; {verdict(worst <= 13, True)}")
        row("4", "whole stack, sum of PSS, trivial model", f"{num(med(memory['pss_mib']))} MiB",
            " · ".join(f"{SHORT.get(n, n)} {num(med(start[n]['memory']['pss_mib']))}"
                       for n in ("bare-gunicorn", "seed-style", "official-toolkit") if "memory" in start.get(n, {})))

    mm = figures.get("model_memory", {})
    if "preload" in mm:
        copies = med(mm["preload"]["model_copies"])
        row("4", f"{mm['model_mib']} MiB model, `SMSUPER_PRELOAD_MODEL=true`: copies resident", num(copies, "{:.2f}"),
            f"{num(med(mm['no_preload']['model_copies']), '{:.2f}')} without preload", "bar ≈ 1 copy",
            verdict(copies < 1.25, False))
    term = figures.get("sigterm", {})
    if "smsuper" in term:
        mine = term["smsuper"]
        gone = med(mine["gone_after_last_completed_ms"])
        row("5", f"SIGTERM, 4 requests of {term['request_seconds']:g} s in flight: answered; all gone after the last",
            f"{num(med(mine['completed']))}/4; {num(gone)} ms", f"seed {num(med(term['seed-style']['completed']))}/4",
            "bar all 4; < 1 s", verdict(mine["all_completed_every_run"] and gone is not None and gone < 1000, False))
    relay = figures.get("log_relay", {})
    if "ratio" in relay:
        row("6", "training log relay, 1 GiB of 100-byte lines", f"{num(med(relay['smsuper_mib_per_s']))} MiB/s",
            f"cat {num(med(relay['cat_mib_per_s']))} MiB/s ({num(med(relay['ratio']), '{:.2f}')}×)", "bar ≥ 0.8× cat",
            verdict(med(relay["ratio"]) >= 0.8, False))
    versions = figures.get("version_start", {}).get("pythons", {})
    if versions:
        ok = {v: s for v, s in versions.items() if "warm_s" in s}
        row("7", "`python smsuper.pyz --version`, CPython " + " / ".join(v.rsplit(".", 1)[0] for v in ok),
            " / ".join(num(med(s["warm_s"]) * 1000, "{:.1f}") for s in ok.values()) + " ms",
            "`python -c pass` " + " / ".join(num(med(s["python_alone_s"]) * 1000, "{:.1f}") for s in ok.values()) + " ms")
        row("7", "smsuper.pyz size", f"{figures['version_start']['pyz_bytes']:,} bytes")
    scrape = figures.get("metrics_scrape", {})
    if scrape.get("available"):
        row("8", "metrics scrape after 1,000 worker restarts", f"{num(med(scrape['scrape_ms']), '{:.1f}')} ms",
            f"{num(med(scrape['scrape_ms_before']), '{:.1f}')} ms before them", "bar < 100 ms",
            verdict(med(scrape["scrape_ms"]) < 100, False))

    model = figures.get("real_model", {})
    for rows_count in (1, 100):
        cases = [model.get("cases", {}).get(f"{rows_count} row{'s' if rows_count != 1 else ''}, {c} conns")
                 for c in (16, 64)]
        if not all(cases):
            continue
        label = f"{rows_count} row{'s' if rows_count != 1 else ''}"
        peers = [n for n in cases[0] if isinstance(cases[0][n], dict) and "rps" in cases[0][n] and n != "smsuper"]
        key = "rps" if rows_count == 1 else "rows_per_s"
        what = "req/s" if rows_count == 1 else "rows/s"
        row("9", f"real model (scikit-learn), CSV of {label}: {what}, 16 / 64 conns",
            both([med(c["smsuper"][key]) for c in cases]),
            " · ".join(f"{SHORT.get(n, n)} {both([med(c[n][key]) for c in cases])}" for n in peers))
        best = [med(c["ratios"].get("smsuper/best peer")) for c in cases]
        row("9", f"ratio to the better peer, {label}, 16 / 64 conns (per round, median)", both(best, "{:.2f}", "×"),
            "", "goal ≥ 1.3×", verdicts([None if r is None else r >= 1.3 for r in best], True))
        row("9", f"p50 / p99 ms, {label}, 64 conns",
            f"{num(med(cases[1]['smsuper']['p50_ms']), '{:.1f}')} / {num(med(cases[1]['smsuper']['p99_ms']), '{:.1f}')}",
            " · ".join(f"{SHORT.get(n, n)} {num(med(cases[1][n]['p50_ms']), '{:.1f}')} / "
                       f"{num(med(cases[1][n]['p99_ms']), '{:.1f}')}" for n in peers))
        row("9", f"server CPU µs per request, {label}, 16 / 64 conns",
            both([med(c["smsuper"]["server_cpu_us_per_request"]) for c in cases]),
            " · ".join(f"{SHORT.get(n, n)} {both([med(c[n]['server_cpu_us_per_request']) for c in cases])}"
                       for n in peers))
    multi = figures.get("multi_model", {})
    if "load_s" in multi:
        times, tk = multi["load_s"], "official-toolkit"
        ratio = med(multi["load_ratios"]["trivial"])
        row("10", f"multi-model: `POST /models` to 200, trivial / {multi['big_mib']} MiB model",
            f"{num(med(times['smsuper']['trivial']), '{:.3f}')} / {num(med(times['smsuper']['big']), '{:.3f}')} s",
            f"toolkit {num(med(times[tk]['trivial']), '{:.3f}')} / {num(med(times[tk]['big']), '{:.3f}')} s",
            f"goal trivial ≤ {report.MME_LOAD_GOAL:g}× toolkit ({num(ratio, '{:.2f}')}×)",
            verdict(None if ratio is None else ratio <= report.MME_LOAD_GOAL, True))
        cases = multi["throughput"]
        labels = list(cases)
        ratios = [med(cases[label]["ratio"]) for label in labels]
        row("10", f"multi-model: invocations req/s, {' / '.join(labels)}, {multi['connections']} conns",
            both([med(cases[label]["smsuper"]["rps"]) for label in labels]),
            f"toolkit {both([med(cases[label][tk]['rps']) for label in labels])}",
            f"goal ≥ 1× toolkit ({both(ratios, '{:.2f}', '×')})",
            verdicts([None if r is None else r >= 1.0 for r in ratios], True))
        memory = multi["memory"]
        row("10", f"multi-model: whole container with {multi['models']} models, PSS / RSS",
            f"{num(memory['smsuper']['loaded']['pss_mib'])} / {num(memory['smsuper']['loaded']['rss_mib'])} MiB",
            f"toolkit {num(memory[tk]['loaded']['pss_mib'])} / {num(memory[tk]['loaded']['rss_mib'])} MiB")
        mine, theirs = multi["unload"]["smsuper"], multi["unload"][tk]
        row("10", f"multi-model: memory an unload of the {multi['big_mib']} MiB model gives back",
            num(100 * mine["given_back_share"], "{:.1f}") + " %",
            f"toolkit {num(100 * theirs['given_back_share'], '{:.1f}')} %",
            f"goal ≥ {report.MME_GIVE_BACK_GOAL:.0%}", verdict(mine["given_back_share"] >= report.MME_GIVE_BACK_GOAL, True))
        cycles = multi["cycles"]
        row("10", f"multi-model: PID 1 RSS / fds over {cycles['cycles']} load/unload cycles",
            f"{cycles['rss_kb_before']:,} → {cycles['rss_kb_after']:,} kB / {cycles['fds_before']} → {cycles['fds_after']}",
            "", "goal no growth", verdict(report.no_leak(cycles), True))
    head = ["#", "figure", "smsuper", "baselines, same run", "bar / goal", ""]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in r) + " |" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "results" / "latest.json"
    print(build(json.loads(path.read_text())))
